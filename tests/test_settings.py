"""Every setting is declared once (`popalign.config`): the command line, a recipe and the Python API accept and
refuse the same values with the same line, and a datatrove task receives the build's plan itself."""

from __future__ import annotations

import math
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any

import pytest

import popalign
from popalign import cli, scale_out
from popalign.config import BuildConfig, Endpoints, JudgeOptions
from popalign.plan import BuildPlan, make_plan

URL = "http://localhost:9"  # nothing is ever asked of it: every case is refused before a request
KNOWN_ROLES = "(known: default, large, small, first, second, planner, reviser, ranker, teacher)"

#: Each bad value: the flags, the recipe and the API calls that give it, and the one line all of them answer.
CASES: dict[str, tuple[list[str], str, list[dict[str, Any]], str]] = {
    "unknown role": (
        ["--model", f"defualt={URL}"],
        f"roles: {{defualt: '{URL}'}}\n",
        [{"roles": {"defualt": URL}}],
        f"roles: unknown role 'defualt' {KNOWN_ROLES}",
    ),
    "misspelt key": (
        ["--concurrncy", "8"],
        "concurrncy: 8\n",
        [{"concurrncy": 8}],
        "unknown setting 'concurrncy' (did you mean 'concurrency'?)",
    ),
    "concurrency 0": (
        ["--concurrency", "0"],
        "concurrency: 0\n",
        [{"concurrency": 0}, {"endpoints": {"concurrency": 0}}],
        "concurrency: expected a whole number >= 1, got 0",
    ),
    "max_new_tokens 0": (
        ["--max-new-tokens", "0"],
        "generation: {max_new_tokens: 0}\n",
        [{"max_new_tokens": 0}, {"params": {"max_new_tokens": 0}}],
        "max_new_tokens: expected a whole number >= 1, got 0",
    ),
    "judge_max_new_tokens 0": (
        ["--judge-model", URL, "--judge-max-new-tokens", "0"],
        f"judge_model: '{URL}'\njudge_max_new_tokens: 0\n",
        [{"judge_model": URL, "judge_max_new_tokens": 0}, {"judge": {"model": URL, "max_new_tokens": 0}}],
        "judge_max_new_tokens: expected a whole number >= 1, got 0",
    ),
    "min_judge agreed": (
        ["--judge-model", URL, "--min-judge", "agreed"],
        f"judge_model: '{URL}'\nmin_judge: agreed\n",
        [{"judge_model": URL, "min_judge": "agreed"}],
        "min_judge: expected one of agree, got 'agreed'",
    ),
    "temperature nan": (
        ["--temperature", "nan"],
        "generation: {temperature: .nan}\n",
        [{"temperature": math.nan}, {"params": {"temperature": math.nan}}],
        "temperature: expected a number >= 0 (0 is greedy), got nan",
    ),
    "price without a role": (
        ["--price", "0.15,0.6"],
        "price: ['0.15,0.6']\n",
        [{"price": ["0.15,0.6"]}],
        "price: expected ROLE=IN,OUT: a role's price per million tokens in and out, got ['0.15,0.6']",
    ),
    "price of an unknown role": (
        ["--price", "huge=1,2"],
        "price: {huge: '1,2'}\n",
        [{"price": {"huge": "1,2"}}, {"prices": {"huge": [1, 2]}}],
        f"price: unknown role 'huge' {KNOWN_ROLES}",
    ),
    "budget 0": (
        ["--budget", "0"],
        "budget: 0\n",
        [{"budget": 0}],
        "budget: expected a number of tokens, or an amount such as $5, got 0",
    ),
    "best_of 1": (
        ["--best-of", "1"],
        "best_of: 1\n",
        [{"best_of": 1}, {"styles": {"best_of": 1}}],
        "best_of: expected a whole number from 2 to 64, got 1",
    ),
}

#: Bad combinations of good values: the flags and the API calls that give them, and the one line both answer.
COMBINED: dict[str, tuple[list[str], dict[str, Any], str]] = {
    "money budget without prices": (
        ["--budget", "$5", "--model", f"default={URL}", "--strategies", "prefix"],
        {"budget": "$5", "roles": {"default": URL}, "strategies": "prefix"},
        "budget $5.00: role default has no price; give --price default=IN,OUT (per million tokens in and out), or a "
        "budget in tokens",
    ),
    "budget with an executor": (
        ["--budget", "1000", "--executor", "local", "--tasks", "2"],
        {"budget": 1000, "executor": "local", "tasks": 2},
        "budget and executor do not go together: every task would spend a budget of its own",
    ),
    "dry run with a push": (
        ["--dry-run", "--push-to", "org/name", "--release", "1.0.0"],
        {"dry_run": True, "push_to": "org/name", "release": "1.0.0"},
        "dry_run writes nothing and runs here: leave out executor and push_to",
    ),
    "temperatures reversed": (
        ["--low-temperature", "1.5", "--high-temperature", "1"],
        {"low_temperature": 1.5, "high_temperature": 1},
        "low_temperature 1.5 must be below high_temperature 1.0",
    ),
}


@pytest.mark.parametrize("case", list(COMBINED))
def test_the_cli_and_the_api_refuse_a_bad_combination_with_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, settings, line = COMBINED[case]
    out = tmp_path / "out"
    assert cli.main(["build", "--out", str(out), *flags]) == 2
    assert capsys.readouterr().err == f"popalign: error: {line}\n"
    with pytest.raises(popalign.ConfigError) as refused:
        popalign.build(out=out, **settings)
    assert str(refused.value) == line and not out.exists()


@pytest.mark.parametrize("case", list(CASES))
def test_the_cli_a_recipe_and_the_api_refuse_a_bad_value_with_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, recipe, calls, line = CASES[case]
    out = tmp_path / "out"
    assert cli.main(["build", "--out", str(out), *flags]) == 2
    assert capsys.readouterr().err == f"popalign: error: {line}\n"
    (tmp_path / "recipe.yaml").write_text(f"strategies: [prefix]\n{recipe}")
    assert cli.main(["build", "--config", str(tmp_path / "recipe.yaml"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"popalign: error: {tmp_path / 'recipe.yaml'}: {line}\n"
    for settings in calls:
        with pytest.raises(popalign.ConfigError) as refused:
            popalign.build(out=out, **settings)
        assert str(refused.value) == line
    assert not out.exists()


def test_the_settings_objects_check_their_own_values() -> None:
    with pytest.raises(popalign.ConfigError, match=r"^concurrency: expected a whole number >= 1, got 0$"):
        Endpoints(concurrency=0)
    with pytest.raises(popalign.ConfigError, match=r"^judge_max_new_tokens: expected a whole number >= 1, got 0$"):
        JudgeOptions(model=URL, max_new_tokens=0)
    with pytest.raises(popalign.ConfigError, match=r"^min_judge: expected one of agree, got 'agreed'$"):
        JudgeOptions(model=URL, min_judge="agreed")
    assert "sk-secret" not in repr(Endpoints(token="sk-secret"))


def test_the_parser_and_the_recipe_keys_come_from_the_declarations() -> None:
    help_text = cli._parser()._subparsers._group_actions[0].choices["build"].format_help()  # type: ignore[union-attr]
    for cls in (BuildConfig, Endpoints, JudgeOptions):
        for item in fields(cls):
            key = item.metadata.get("key") or item.name
            if "help" in item.metadata and item.metadata["cli"]:
                flag = item.metadata["negated"] or key
                assert f"--{flag.replace('_', '-')}" in help_text, key


def test_a_shard_task_receives_the_plan_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A field added to `BuildPlan` reaches every task with no other edit: the task is given the plan."""
    (tmp_path / "p.jsonl").write_text("".join(f'{{"prompt": "q{n}"}}\n' for n in range(6)))
    config = BuildConfig.of(prompts=str(tmp_path / "p.jsonl"), strategies="prefix", roles={"default": URL},
                            out=tmp_path / "out", executor="local", tasks=3, temperature=0.2)  # fmt: skip
    plan = make_plan(config)
    extended = make_dataclass("ExtendedPlan", [("added", str, field(default=""))], bases=(BuildPlan,), frozen=True)
    given = extended(**{item.name: getattr(plan, item.name) for item in fields(plan)}, added="seen by the task")
    ran = []
    monkeypatch.setattr(scale_out, "run_plan", lambda plan, out, progress: ran.append((plan, out)))
    scale_out.ShardTask(given, tmp_path / "work")(None, rank=1, world_size=3)
    ((task_plan, out),) = ran
    assert task_plan.added == "seen by the task" and task_plan.shard == (2, 3)
    assert task_plan.params == plan.params and task_plan.params.temperature == 0.2
    assert task_plan.config.executor is None and task_plan.config.strategies == "prefix"
    assert out == scale_out.part_folder(tmp_path / "work", 1, 3)
    assert len(task_plan.instructions().instructions) == task_plan.instructions().total - sum(
        len(plan.for_shard(k, 3).instructions().instructions) for k in (1, 3)
    )


def test_publishing_takes_release_and_the_old_version_flag_still_works_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["push", str(tmp_path), "--repo", "org/name", "--version", "1.0.0"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "popalign: warning: --version X.Y.Z is deprecated here, use --release X.Y.Z",
        f"popalign: error: {tmp_path}: no popalign build here (popalign_build.json is missing)",
    ]
    assert cli.main(["build", "--push-to", "org/name", "--release", "1.0", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "popalign: error: release: expected a version X.Y.Z, got 1.0\n"
    assert cli.main(["build", "--private", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "popalign: error: private: given without push_to\n"


def test_env_prints_the_versions_and_the_embedded_model_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"- popalign version: {popalign.__version__}" in lines
    assert any(line.startswith("- transformers version: 5.") for line in lines)
    (model,) = [line for line in lines if line.startswith("- Embedded model file: ")]
    assert model.endswith(" MiB)") and "SmolLM2-135M-Instruct" in model


@pytest.mark.parametrize("command", ["score", "judge"])
def test_score_and_judge_check_their_settings_as_build_does(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command, str(tmp_path), "--batch-size", "0", "--judge-model" if command == "judge" else "--swap",
                     URL if command == "judge" else "keep"]) == 2  # fmt: skip
    assert capsys.readouterr().err == "popalign: error: batch_size: expected a whole number >= 1, got 0\n"
    assert cli.main([command, str(tmp_path), "--concurrency" if command == "judge" else "--order", "x"]) == 2
    expected = "concurrency: expected a whole number >= 1" if command == "judge" else "order: expected one of"
    assert capsys.readouterr().err.startswith(f"popalign: error: {expected}")


API_MISUSE = {
    "prompts=123": (lambda out: popalign.build(123, out=out), "prompts: expected a file or a Hub dataset ORG/NAME"),
    "strategies=None": (lambda out: popalign.build(strategies=None, out=out), "strategies: expected a value, got None"),
    "license=None": (lambda out: popalign.build(license=None, out=out), "license: expected a license identifier"),
    "shard=2": (lambda out: popalign.build(shard=2, out=out), "shard: expected K/N with 1 <= K <= N, got 2"),
    "out=None": (lambda out: popalign.build(out=None), "out: expected a path, got None"),
    "roles=list": (lambda out: popalign.build(roles=["x"], out=out), "roles: expected a mapping"),
    "Default role": (lambda out: popalign.build(roles={"Default": URL}, out=out), "roles: unknown role 'Default'"),
    "limit=-1": (lambda out: popalign.build(limit=-1, out=out), "limit: expected a whole number >= 1, got -1"),
    "retries=0": (lambda out: Endpoints(retries=0), "retries: expected a whole number >= 1, got 0"),
    "timeout=-1": (lambda out: Endpoints(timeout=-1), "timeout: expected a number of seconds > 0, got -1"),
    "max_shard_size=-5": (lambda out: popalign.build(max_shard_size=-5, out=out), "max_shard_size: expected a size"),
    "batch_size=0": (lambda out: popalign.build(batch_size=0, out=out), "batch_size: expected a whole number >= 1"),
    "merge([])": (lambda out: popalign.merge([], out=out), "parts: expected part folders, got []"),
    "merge(text)": (lambda out: popalign.merge(str(out), out=out), "merge joins the part folders of a sharded build"),
    "judge(b, None)": (lambda out: popalign.judge(out, None), "a judge is an LLM (judge_model) or a reward model"),
    "judge(b, text)": (lambda out: popalign.judge(out, "m"), "judge: expected JudgeOptions, got str"),
    "push(version=1)": (lambda out: popalign.push(out, repo_id="org/x", version=1), "release: expected a version"),
}  # fmt: skip


@pytest.mark.parametrize("call", list(API_MISUSE))
def test_the_api_refuses_wrong_types_with_named_errors(call: str, tmp_path: Path) -> None:
    misuse, says = API_MISUSE[call]
    with pytest.raises(popalign.PopAlignError) as refused:
        misuse(tmp_path / "out")
    assert str(refused.value).startswith(says) and len(str(refused.value).splitlines()) == 1
    assert not (tmp_path / "out").exists()
