"""Unbounded or unchecked inputs at the edges, each refused in one line with exit status 2 (or a `PopAlignError`
from the API), nothing half-written: a recipe that is a device, huge, or gives a path as a list; a template that
asks for `lipsum`; a dry run's budget; API arguments of the wrong type; a classifier given as a reward model; a
`layers=N` copy the model cannot make; an output folder that is another build, the build itself, unwritable, or
whose lock file's place holds a folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import popalign
from helpers import HERE, POPALIGN, build, run_offline, save_tiny_model
from popalign import ConfigError, JudgeOptions, PopAlignError


def one_line(result, says: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"popalign: error: {says}") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.slow
def test_a_recipe_that_is_a_device_huge_or_gives_a_path_as_a_list_is_refused(tmp_path: Path) -> None:
    one_line(run_offline(POPALIGN, "build", "--recipe", "/dev/zero"), "/dev/zero: not a file; a recipe is a YAML file")
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (1 << 21) + "\n")
    one_line(run_offline(POPALIGN, "build", "--config", huge), f"{huge}: over 1024 KiB; a recipe is a page of settings")
    for key, value in (("out", ["a"]), ("templates", {"a": 1}), ("cache_dir", 5), ("prompts", ["a.jsonl"])):
        recipe = tmp_path / f"{key}.yaml"
        recipe.write_text(json.dumps({key: value}))
        one_line(run_offline(POPALIGN, "build", "--recipe", recipe, "--dry-run"),
                 f"{recipe}: {key}: expected a path, got {value!r}")  # fmt: skip
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["huge.yaml", "out.yaml", "templates.yaml", "cache_dir.yaml", "prompts.yaml"]
    )


@pytest.mark.parametrize("call", ["lipsum(n=3000000)", "lipsum(min=5, max=3)", "lipsum()"])
@pytest.mark.slow
def test_a_template_has_no_lipsum(call: str, scripted, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(HERE / "scripted_templates", templates)
    (templates / "prefix.jinja").write_text(f"{{{{ {call} }}}} {{{{ instruction }}}}")
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix", "--templates", templates)
    one_line(result, f"{templates / 'prefix.jinja'}: cannot render ('lipsum' is undefined)")
    assert not out.exists()


@pytest.mark.slow
def test_a_dry_run_spends_no_more_than_its_budget(scripted, tmp_path: Path) -> None:
    url, log = scripted
    result, _ = build(tmp_path, url, "--strategies", "prefix,refine", "--dry-run", "--budget", "10")
    one_line(result, "the budget of 10 tokens is spent before the dry run's sample of 8 instructions is answered")
    assert "rerun with a larger --budget, or the dry run without one" in result.stderr
    asked = len(log.read_text().splitlines())
    assert 0 < asked < 32  # stopped at the budget, past it by the requests in flight: the sample asks 32
    with pytest.raises(popalign.BudgetSpentError):
        popalign.estimate(str(tmp_path / "prompts.jsonl"), strategies=["prefix", "refine"], roles={"default": url},
                          budget="10", cache=False, progress=False)  # fmt: skip


def test_api_arguments_of_the_wrong_type_are_one_line(tmp_path: Path) -> None:
    calls = {
        "build: expected a folder's path or a Build, got 123": lambda: popalign.export(123, out=tmp_path / "x"),
        "out: expected a path, got None": lambda: popalign.export(tmp_path, out=None),
        "path: expected a folder's path, got 123": lambda: popalign.open_build(123),
        "a judge is an LLM (judge_model) or a reward model (judge_reward_model): give one": lambda: popalign.evaluate(
            tmp_path, models={"a": "smollm2"}, reference="smollm2", judge=None
        ),
        "model: expected [NAME=]SPEC, once per trained model, each named once, got {'a': 5}": lambda: popalign.evaluate(
            tmp_path, models={"a": 5}, reference="smollm2", judge=JudgeOptions(model="smollm2")
        ),
    }
    for says, call in calls.items():
        with pytest.raises(ConfigError) as refused:
            call()
        assert str(refused.value) == says
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_classifier_is_no_reward_model(scripted, tmp_path: Path) -> None:
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix")
    assert result.returncode == 0, result.stderr
    classifier = save_tiny_model(tmp_path / "three-labels", reward=True, labels=3)
    judged = run_offline(POPALIGN, "judge", out, "--judge-reward-model", classifier, "--no-progress")
    one_line(judged, f"reward model '{classifier}': its head has 3 labels; a reward model gives each answer one score")
    with pytest.raises(PopAlignError, match="its head has 3 labels"):
        popalign.judge(out, JudgeOptions(reward_model=str(classifier)), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("layers", [1, 3, 11, 30])
def test_a_copy_with_too_few_or_too_many_layers_is_refused_before_it_loads(layers: int, tmp_path: Path) -> None:
    result = run_offline(POPALIGN, "build", "--model", "large=smollm2", "--model", f"small=smollm2:layers={layers}",
                         "--strategies", "nparam",
                         "--limit", 1, "--out", tmp_path / "d", "--no-cache", "--no-progress")  # fmt: skip
    one_line(
        result, f"model spec smollm2:layers={layers}: layers must be from 12 to 29 for a model of 30 decoder layers"
    )
    assert "/tmp" not in result.stderr.replace(str(tmp_path), "")  # no temporary file named


@pytest.mark.slow
def test_an_output_folder_that_cannot_hold_the_output_is_one_line(scripted, tmp_path: Path) -> None:
    url = scripted[0]
    result, out = build(tmp_path, url, "--strategies", "prefix", "--test-size", "0.5", tags=["a", "b", "c", "d"])
    assert result.returncode == 0, result.stderr
    other, _ = build(tmp_path, url, "--strategies", "prefix", out="other")
    assert other.returncode == 0, other.stderr
    evaluated = run_offline(POPALIGN, "evaluate", "--build", out, "--model", url, "--reference", url, "--judge-model",
                            url, "--out", tmp_path / "other", HF_HUB_OFFLINE="0")  # fmt: skip
    one_line(evaluated, f"out: {tmp_path / 'other'} holds a build; give the report a folder of its own")
    one_line(run_offline(POPALIGN, "export", out, "--out", out / "exported"),
             f"{out / 'exported'}: inside the build {out}; export into a folder of its own")  # fmt: skip
    one_line(run_offline(POPALIGN, "export", out, "--out", "/etc/hostname/exported"),
             "/etc/hostname/exported: cannot create the export folder (Not a directory)")  # fmt: skip
    (tmp_path / ".third.popalign-lock").mkdir()  # where the lock file of `third` goes
    locked, third = build(tmp_path, url, "--strategies", "prefix", out="third")
    one_line(locked, f"{tmp_path / '.third.popalign-lock'}: popalign's lock file for {third} is not a file here")
    assert not third.exists()
