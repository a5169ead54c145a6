"""Every command's settings are declared once (`popalign.commands`, as build's are in `popalign.config`): its flags,
its recipe's keys and its Python API's keywords come from the declaration, so the same bad value gets the same one
line from all three, and docs/cli.md names every flag the declarations make."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

import popalign
from helpers import load
from popalign import cli
from popalign.commands import COMMANDS, command_fields, groups
from popalign.declarations import declared, key_of

ROOT = Path(__file__).resolve().parents[1]
URL = "http://localhost:9"  # nothing is ever asked of it: every case is refused before a request
EVALUATE = {"build": "b", "model": [URL], "reference": URL, "judge_model": URL}

#: Each bad value: the command, the settings that give it (besides the command's subject) and the line it gets,
#: for every kind of bad value the build's test covers (a misspelt key, a number out of range, text for a number, a
#: choice not offered, NaN, a value of the wrong form).
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "score misspelt": ("score", {"batch_sise": 8}, "unknown setting 'batch_sise' (did you mean 'batch_size'?)"),
    "score batch 0": ("score", {"batch_size": 0}, "batch_size: expected a whole number >= 1, got 0"),
    "score text": ("score", {"concurrency": "x"}, "concurrency: expected a whole number >= 1, got 'x'"),
    "score choice": ("score", {"swap": "flip"}, "swap: expected one of keep, drop, swap, got 'flip'"),
    "score nan": ("score", {"min_score": math.nan}, "min_score: expected a number, got nan"),
    "score rpm 0": ("score", {"rpm": 0}, "rpm: expected a whole number >= 1, got 0"),
    "judge none": ("judge", {"batch_size": 4}, "a judge is an LLM (judge_model) or a reward model "
                   "(judge_reward_model): give one"),
    "judge misspelt": ("judge", {"judge_modle": URL}, "unknown setting 'judge_modle' (did you mean 'judge_model'?)"),
    "judge tokens 0": ("judge", {"judge_model": URL, "judge_max_new_tokens": 0},
                       "judge_max_new_tokens: expected a whole number >= 1, got 0"),
    "judge text": ("judge", {"judge_model": URL, "batch_size": "x"},
                   "batch_size: expected a whole number >= 1, got 'x'"),
    "judge choice": ("judge", {"judge_model": URL, "min_judge": "agreed"},
                     "min_judge: expected one of agree, got 'agreed'"),
    "judge nan": ("judge", {"judge_model": URL, "timeout": math.nan},
                  "timeout: expected a number of seconds > 0, got nan"),
    "evaluate missing": ("evaluate", {"build": "b", "model": [URL], "judge_model": URL}, "reference: required"),
    "evaluate tokens 0": ("evaluate", EVALUATE | {"max_new_tokens": 0},
                          "max_new_tokens: expected a whole number >= 1, got 0"),
    "evaluate text": ("evaluate", EVALUATE | {"retries": "x"}, "retries: expected a whole number >= 1, got 'x'"),
    "evaluate nan": ("evaluate", EVALUATE | {"max_retry_wait": math.nan},
                     "max_retry_wait: expected a number of seconds > 0, got nan"),
    "evaluate not its own": ("evaluate", EVALUATE | {"min_judge": "agree"}, "unknown setting 'min_judge'"),
    "evaluate name twice": ("evaluate", EVALUATE | {"model": ["a=x", "a=y"]},
                            "model: expected [NAME=]SPEC, once per trained model, each named once, got ['a=x', 'a=y']"),
    "push missing": ("push", {"release": "1.0.0"}, "repo: required"),
    "push version": ("push", {"repo": "org/x", "release": "1.0"}, "release: expected a version X.Y.Z, got 1.0"),
    "push misspelt": ("push", {"repo": "org/x", "relase": "1.0.0"},
                      "unknown setting 'relase' (did you mean 'release'?)"),
    "merge missing": ("merge", {}, "out: required"),
    "merge misspelt": ("merge", {"outt": "m"}, "unknown setting 'outt' (did you mean 'out'?)"),
    "export choice": ("export", {"out": "e", "format": "csv"}, "format: expected one of llamafactory, got 'csv'"),
    "export missing": ("export", {"format": "llamafactory"}, "out: required"),
    "push flags": ("push", {"repo": "org/x", "release": "1.0.0", "flags": "yes"},
                   "flags: expected one of ignore, apply, got 'yes'"),
    "review port": ("review", {"port": 70000}, "port: expected a port, 0 to 65535 (0: any free one), got 70000"),
    "review reader": ("review", {"reader": "ana maria"},
                      "reader: expected a name of letters, digits, '.', '_' or '-' (up to 40), got 'ana maria'"),
    "review misspelt": ("review", {"prot": 8000}, "unknown setting 'prot' (did you mean 'port'?)"),
    "show 0": ("show", {"n": 0}, "n: expected a whole number >= 1, got 0"),
    "show text": ("show", {"width": "wide"}, "width: expected a whole number >= 1, got 'wide'"),
    "show condition": ("show", {"where": ["score"]},
                       "--where 'score': expected FIELD OP VALUE, for example score<0 or strategy=prefix"),
    "show field": ("show", {"where": ["scroe<0"]}, "--where 'scroe<0': unknown field 'scroe' (fields: strategy, "
                   "prompt_id, chosen_model, rejected_model, judge_verdict, score, score_per_token, judge_margin, "
                   "swapped, prompt, chosen, rejected)"),
}  # fmt: skip


def _subject(command: str, tmp_path: Path) -> list[str]:
    """The command's positional arguments: a build folder, or two part folders."""
    if command == "evaluate":
        return []
    return [str(tmp_path / "p1"), str(tmp_path / "p2")] if command == "merge" else [str(tmp_path / "b")]


def _flags(settings: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in settings.items():
        flag = "-n" if key == "n" else "--" + key.replace("_", "-")
        for one in value if isinstance(value, list) else [value]:
            flags += [flag, str(one)]
    return flags


def _call(command: str, subject: list[str], settings: dict[str, Any]) -> Any:
    function = {"show": popalign.pairs}.get(command) or getattr(popalign, command)
    if command == "merge":
        return function(subject, **settings)
    return function(*subject, **settings)


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_refuses_a_bad_value_with_one_line_from_the_cli_a_recipe_and_the_api(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, settings, line = CASES[case]
    subject = _subject(command, tmp_path)
    assert cli.main([command, *subject, *_flags(settings)]) == 2
    assert capsys.readouterr().err == f"popalign: error: {line}\n"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(settings))
    assert cli.main([command, *subject, "--config", str(recipe)]) == 2
    # a value is refused naming the file; what is missing from the recipe and the flags alike, as the flags' line
    together = line.endswith(": required") or line.endswith("give one")
    assert capsys.readouterr().err == f"popalign: error: {'' if together else f'{recipe}: '}{line}\n"
    with pytest.raises(popalign.ConfigError) as refused:
        _call(command, subject, settings)
    assert str(refused.value) == line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["recipe.yaml"]  # nothing written


def test_a_command_recipe_gives_settings_the_flags_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--config` holds a command's settings by their keys, paths beside it; a flag given wins over the recipe."""
    (tmp_path / "show.yaml").write_text("n: 3\nwhere: [strategy=prefix]\n")
    assert cli.main(["show", str(tmp_path / "b"), "--config", str(tmp_path / "show.yaml"), "-n", "0"]) == 2
    assert capsys.readouterr().err == "popalign: error: n: expected a whole number >= 1, got 0\n"  # -n 0 won
    assert cli.main(["show", str(tmp_path / "b"), "--config", str(tmp_path / "show.yaml")]) == 2
    assert (
        capsys.readouterr().err
        == f"popalign: error: {tmp_path / 'b'}: no popalign build here (popalign_build.json is missing)\n"
    )
    (tmp_path / "export.yaml").write_text("out: ../elsewhere\n")
    assert cli.main(["export", str(tmp_path / "b"), "--config", str(tmp_path / "export.yaml")]) == 2
    assert capsys.readouterr().err == (
        f"popalign: error: {tmp_path / 'export.yaml'}: out: '../elsewhere' leaves the recipe's folder; a recipe names "
        "files beside it (give --out on the command line to use another place)\n"
    )


def test_every_setting_of_every_command_says_what_it_takes() -> None:
    """Each declared setting has help text; the judge's help names PairRM, the paper's second judge."""
    for name, cls in COMMANDS.items():
        for key, item in command_fields(cls).items():
            assert len(item.metadata["help"]) > 10, (name, key)
        assert all(item.metadata["title"] for item in groups(cls)), name
    judge = cli._parser()._subparsers._group_actions[0].choices["judge"].format_help()  # type: ignore[union-attr]
    assert "PairRM" in " ".join(judge.split())


def test_docs_cli_names_every_flag_of_every_command() -> None:
    """docs/cli.md's command summary names each command's flags, as the declarations make them, and no other."""
    page = (ROOT / "docs" / "cli.md").read_text()
    summary = page.split("```")[1]
    blocks = re.split(r"\n(?=popalign )", summary.strip())
    written = {block.split()[1]: set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", block)) for block in blocks}
    parser = cli._parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    for command in ["build", *COMMANDS]:
        flags = {
            flag
            for action in parser.choices[command]._actions
            for flag in action.option_strings
            if flag not in ("-h", "--help") and action.help != "==SUPPRESS=="
        }
        assert command in written, command
        assert flags - written[command] == set(), (command, "missing from docs/cli.md")
        assert written[command] - flags - {"--recipe"} == set(), (command, "not a flag of the command")
    for cls in COMMANDS.values():
        assert {key_of(item) for item in declared(cls)}, cls


#: A value other than the default for every setting a build's saved recipe records (a new one must be added here).
SAVED_SAMPLES: dict[str, Any] = {
    "prompt_column": "question", "system": "Answer in English.", "strategies": "prefix,refine", "limit": 3,
    "keep_truncated": True, "max_shard_size": "1MB", "test_size": 0.25, "shard": "1/2", "near_duplicates": True,
    "price": {"default": "0.15,0.6"}, "license": "apache-2.0", "language": "en,fr", "pretty_name": "Mine",
    "elicitive_style": "paper", "prefix_style": "harmless", "refine_style": "clair", "share_answers": True,
    "best_of": 3, "low_temperature": 0.1, "high_temperature": 1.5, "thinking": "inline",
    "think_tags": ["<reasoning>", "</reasoning>"], "score": True, "score_model": "smollm2", "score_protocol": "vllm",
    "score_tokenizer": "smollm2:layers=2", "score_contrast": "demon", "min_score": 0.0, "swap": "drop",
    "order": "curriculum", "judge_model": "smollm2:layers=4", "judge_max_new_tokens": 64, "min_judge": "agree",
    "license_name": "x", "license_link": "y", "judge_reward_model": "org/reward",
}  # fmt: skip
#: Settings that go with others than the samples' (a license other than `other`, an LLM judge): tried apart.
APART = {"license_name": "x", "license_link": "y", "judge_reward_model": "org/reward"}


def test_the_saved_recipe_records_every_recorded_setting_and_reads_back_the_same(tmp_path: Path) -> None:
    """Every setting a saved recipe records (declared, not `saved=False`) at a value other than its default is
    written, and the recipe reads back to the same settings."""
    from popalign.config import _NOT_SAVED, GROUPS, BuildConfig, saved_settings, settings_index
    from popalign.recipe import load_recipe

    recorded = set()
    for key, (group, name) in settings_index().items():
        if group in ("params", *_NOT_SAVED):
            continue
        item = next(entry for entry in fields(GROUPS[group] if group else BuildConfig) if entry.name == name)
        if key == key_of(item) and item.metadata["recipe"] and item.metadata["saved"]:
            recorded.add(key)
    assert recorded == set(SAVED_SAMPLES), recorded ^ set(SAVED_SAMPLES)
    given = {key: value for key, value in SAVED_SAMPLES.items() if key not in APART}
    saved = saved_settings(BuildConfig.of(**given))
    assert set(saved) == set(given), set(given) ^ set(saved)
    assert saved_settings(BuildConfig.of(**APART)) == APART  # `other` is the default license
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(saved))
    again = BuildConfig.of(**load_recipe(tmp_path / "recipe.yaml").settings)
    assert saved_settings(again) == saved


@pytest.mark.slow
def test_a_build_rebuilds_from_its_own_saved_recipe_with_the_same_rows_from_the_cache(scripted, tmp_path: Path) -> None:
    """A build given settings that change its rows (a column, a system prompt, a limit, near-duplicates, a test
    split, styles, generation settings, prices) saves a recipe that builds the same rows again, every answer from
    the cache."""
    from popalign.recipe import load_recipe

    url, _ = scripted
    topics = ["Explain how ocean tides are caused by the moon and the sun", "Write a haiku about autumn leaves falling",
              "Give three tips for a first job interview", "Why is the sky blue during the day",
              "Summarise the plot of Hamlet in two sentences", "How do I sort a list of numbers in Python",
              "What should I pack for a weekend hiking trip"]  # fmt: skip
    rows = [{"question": topic} for topic in topics]
    rows.append({"question": topics[0] + " in detail"})  # a near-duplicate of the first
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = dict(
        strategies="prefix,refine", prompt_column="question", system="Answer briefly.", limit=8, near_duplicates=True,
        test_size=0.4, refine_style="clair", temperature=0.3, top_k=5, stop=["###"], price={"default": "1,2"},
        license="mit", max_shard_size="10MB", cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    first = popalign.build(tmp_path / "q.jsonl", roles={"default": url}, out=tmp_path / "one", **settings)
    kept = tmp_path / "kept"  # the recipe, its templates and its prompts file, as a user keeps them
    shutil.copytree(tmp_path / "one" / "templates", kept / "templates")
    shutil.copy(tmp_path / "one" / "popalign_recipe.yaml", kept)
    shutil.copy(tmp_path / "q.jsonl", kept)
    recipe = load_recipe(kept / "popalign_recipe.yaml")
    recipe.check_endpoints({"default"})
    again = popalign.build(
        **recipe.settings, roles={**recipe.roles, "default": url}, role_params=recipe.role_generation,
        out=tmp_path / "two", cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert again.summary.stats.generated == 0
    assert first.summary.stats.generated > 0
    for name in ("prefix", "refine"):
        for split in ("train", "test"):
            assert list(load(tmp_path / "two", name, split)) == list(load(tmp_path / "one", name, split)), (name, split)
    one, two = (json.loads((tmp_path / out / "popalign_build.json").read_text()) for out in ("one", "two"))
    assert one["prompts"]["screening"] == two["prompts"]["screening"] and one["prices"] == two["prices"]
    assert (tmp_path / "two" / "popalign_recipe.yaml").read_text() == (kept / "popalign_recipe.yaml").read_text()
