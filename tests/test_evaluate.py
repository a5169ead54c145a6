"""`popalign evaluate` end to end: a build with a held-out test split, two trained tiny models against a third,
and the scripted judge, whose verdict is known (the longer answer wins; as long, a tie): every answer's verdict,
the win rates overall and per strategy with their Wilson intervals, the report's files, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_dataset

from helpers import POPALIGN, run_offline
from popalign.evaluation import WinRate

pytestmark = pytest.mark.slow  # it loads three tiny models with transformers

TEXTS = [f"Explain topic {n} [eval]." for n in range(8)]


def _build(folder: Path, url: str, *flags: str) -> Path:
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in TEXTS))
    built = run_offline(POPALIGN, "build", "--prompts", prompts, "--out", folder / "d", "--no-cache", "--no-progress",
                        "--model", f"default={url}", "--strategies", "prefix,demon", *flags,
                        HF_HUB_OFFLINE="0")  # fmt: skip
    assert built.returncode == 0, built.stderr
    return folder / "d"


def _expected(record: dict) -> str:
    """The scripted judge's verdict, in both orders: the longer answer wins, and answers as long tie."""
    trained, reference = (len(record[key].strip()) for key in ("answer", "reference_answer"))
    return "win" if trained > reference else "loss" if trained < reference else "tie"


def test_evaluate_gives_each_trained_models_win_rate_on_the_test_split(
    scripted, tiny_model_dir: Path, tmp_path: Path
) -> None:
    url, _ = scripted
    build = _build(tmp_path, url, "--test-size", "0.5")
    held_out = {row["prompt"][0]["content"] for row in load_split(build, "prefix", "test")}
    assert len(held_out) == 4
    report = run_offline(
        POPALIGN, "evaluate", "--build", build, "--model", f"full={tiny_model_dir}",
        "--model", f"cut={tiny_model_dir}:layers=2", "--reference", f"{tiny_model_dir}:layers=3",
        "--judge-model", url, "--max-new-tokens", "12", "--out", tmp_path / "report", "--no-cache", "--no-progress",
        HF_HUB_OFFLINE="0",
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    records = [json.loads(line) for line in (tmp_path / "report" / "answers.jsonl").read_text().splitlines()]
    assert {r["instruction"] for r in records} == held_out and len(records) == 8  # 4 instructions, 2 models
    assert all(r["verdict"] == _expected(r) for r in records)
    table = json.loads((tmp_path / "report" / "evaluation.json").read_text())["table"]
    assert list(table) == ["full", "cut"] and list(table["full"]) == ["overall", "prefix", "demon"]
    for model in ("full", "cut"):
        verdicts = [{"win": "chosen", "loss": "rejected"}.get(r["verdict"], r["verdict"]) for r in records
                    if r["model"] == model]  # fmt: skip
        expected = WinRate.of(verdicts)
        assert table[model]["overall"]["rate"] == expected.rate and table[model]["overall"]["interval"] == list(
            expected.interval
        )
        assert table[model]["prefix"] == table[model]["overall"]  # every held-out instruction has a prefix pair
    assert (tmp_path / "report" / "win_rate.png").read_bytes().startswith(b"\x89PNG")
    lines = report.stdout.splitlines()
    assert any(line.split()[:2] == ["full", "overall"] for line in lines)
    assert "4 held-out instructions of" in report.stdout


def load_split(folder: Path, name: str, split: str):
    return load_dataset(str(folder), name, split=split, cache_dir=str(folder.parent / "hf-cache"))


def test_evaluate_refuses_a_build_without_a_test_split(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    build = _build(tmp_path, url)
    refused = run_offline(POPALIGN, "evaluate", "--build", build, "--model", url, "--reference", url,
                          "--judge-model", url, "--out", tmp_path / "report", HF_HUB_OFFLINE="0")  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"popalign: error: {build}: no test split to evaluate on; build it with --test-size F (a share of the "
        "instructions held out)"
    )
    missing = run_offline(POPALIGN, "evaluate", "--build", build, "--judge-model", url)
    assert missing.returncode == 2 and missing.stderr.strip().endswith("model and reference: required")
    inside = run_offline(POPALIGN, "evaluate", "--build", build, "--model", url, "--reference", url,
                         "--judge-model", url, "--out", build / "report")  # fmt: skip
    assert inside.returncode == 2 and "is inside the build folder" in inside.stderr
