"""`popalign build` end to end, as the README runs it: a Hub-layout folder that `load_dataset` reads per config."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from datasets import load_dataset

from helpers import card_metadata, load
from popalign.contrasts import PAPER
from popalign.dataset.schema import features
from popalign.prompts import load_prompts
from popalign.strategies import clean_answer

HOSTILE = "Explain {{ 7*7 }} and {% for x in y %}{{ x }}{% endfor %} literally."


def check_config(folder: Path, name: str, instructions: set[str]) -> list[dict]:
    """Load one config as a user would and check TRL's explicit-prompt conversational format."""
    rows = load(folder, name)
    assert rows.features == features()
    for row in rows:
        assert row["strategy"] == name
        assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
        assert row["prompt"][0]["content"] in instructions
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
        assert row["chosen"][0]["content"].strip() and row["rejected"][0]["content"].strip()
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        if name == "elicitive":
            assert row["chosen_reasoning"] and row["rejected_reasoning"]
            assert row["chosen_reasoning"] not in row["chosen"][0]["content"]
        else:
            assert row["chosen_reasoning"] is None and row["rejected_reasoning"] is None
    return list(rows)


@pytest.mark.slow
def test_build_on_a_tiny_model_writes_every_config_and_resumes(tiny_roles, popalign, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    texts = [HOSTILE, "Say hello.", "Say hello.", "List two fruits."]
    prompts.write_text("".join(json.dumps({"instruction": t}) + "\n" for t in texts))
    flags = ["--prompts", prompts, "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--max-new-tokens", 8]
    flags.append("--keep-truncated")  # a random tiny model never ends an answer
    first = popalign("build", *flags, *tiny_roles, "--no-progress")
    assert first.returncode == 0, first.stderr
    assert "1 duplicate instructions skipped" in first.stdout
    manifest = json.loads((tmp_path / "out" / "popalign_build.json").read_text())
    written = [name for name in PAPER if manifest["configs"][name]["rows"]]
    assert written == list(PAPER), manifest["configs"]
    card = card_metadata(tmp_path / "out")
    assert [c["config_name"] for c in card["configs"]] == ["all", *written]
    assert [c["config_name"] for c in card["configs"] if c.get("default")] == ["all"]
    assert all(manifest["configs"][name]["truncation"]["rate"] == 1.0 for name in written)
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == sorted(written)
    for name in written:
        rows = check_config(tmp_path / "out", name, set(texts))
        assert len(rows) + sum(manifest["configs"][name]["dropped"].values()) == 3
        assert [p.name for p in (tmp_path / "out" / "data" / name).iterdir()] == ["train-00000-of-00001.parquet"]
    assert manifest["roles"]["small"] == manifest["roles"]["large"] + ":layers=2"
    for name, (chosen, rejected) in {"nparam": ("large", "small"), "leaderboard": ("first", "second")}.items():
        rows = load(tmp_path / "out", name)
        sides = {(manifest["roles"][chosen], manifest["roles"][rejected])}
        assert len(rows) > 0 and {(r["chosen_model"], r["rejected_model"]) for r in rows} == sides
    again = popalign("build", *flags, *tiny_roles, "--no-progress")
    assert again.returncode == 0, again.stderr
    assert " 0 generated " in again.stdout
    assert json.loads((tmp_path / "out" / "popalign_build.json").read_text())["configs"] == manifest["configs"]


@pytest.mark.slow
def test_instruction_with_template_syntax_is_stored_verbatim(tiny_roles, popalign, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt\n"' + HOSTILE + '"\n')
    out = tmp_path / "out"
    result = popalign(
        "build", "--prompts", prompts, "--strategies", "prefix,refine", "--out", out, "--cache-dir", tmp_path / "c",
        "--max-new-tokens", 8, "--model", tiny_roles[1], "--keep-truncated",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("prefix", "refine"):
        assert [r["prompt"][0]["content"] for r in load(out, name)] == [HOSTILE]


@pytest.mark.slow
def test_readme_build_on_the_embedded_model_makes_every_config_with_no_cut_answer(embedded_build) -> None:
    out, result = embedded_build
    for line in ("role small    smollm2:layers=24", "role second   smollm2:layers=26", "wrote "):
        assert line in result.stdout
    instructions = {i.text for i in load_prompts(limit=4).instructions}
    manifest = json.loads((out / "popalign_build.json").read_text())
    assert manifest["roles"]["small"] == "smollm2:layers=24" and manifest["keep_truncated"] is False
    written = []
    for name in PAPER:
        config = manifest["configs"][name]
        assert config["rows"] >= 1, f"{name}: no pair survived ({config['dropped']})"
        rows = check_config(out, name, instructions)
        assert len(rows) + sum(config["dropped"].values()) == 4
        assert config["truncation"]["cut"] == config["dropped"].get("truncated", 0)
        models = {(r["chosen_model"], r["rejected_model"]) for r in rows}
        expected = {"nparam": ("smollm2", "smollm2:layers=24"), "leaderboard": ("smollm2", "smollm2:layers=26")}
        assert models == {expected.get(name, ("smollm2", "smollm2"))}
        written += rows
    everything = load_dataset(str(out), split="train", cache_dir=str(out.parent / "hf-datasets-cache-default"))
    assert sorted(everything["prompt_id"]) == sorted(row["prompt_id"] for row in written)
    assert set(everything["strategy"]) == set(PAPER)
    with sqlite3.connect(out.parent / "cache" / "generations.sqlite") as cache:
        cut = {clean_answer(text) for (text,) in cache.execute("SELECT text FROM generations WHERE finish = 'length'")}
    sides = {row[side][0]["content"] for row in written for side in ("chosen", "rejected")}
    sides |= {
        row[f"{side}_reasoning"] for row in written for side in ("chosen", "rejected") if row["strategy"] == "elicitive"
    }
    assert not cut & sides, "a written answer or plan stopped at the token limit"
    card = (out / "README.md").read_text()
    assert "`smollm2:layers=24`" in card and "weaker copy keeping 24 decoder layers" in card
    assert "**Demo-grade.**" in card and "a copy of it with a middle block of layers removed (keeping 24)" in card
    assert "Reinforcement Learning from Contrast Distillation" in card
    # the default build's card shows its pictures and how each strategy makes a pair
    assert manifest["overview"] == {"lengths": "quality/answer_lengths.png", "rows": "quality/rows_and_drops.png"}
    for picture in manifest["overview"].values():
        assert f"]({picture})" in card and (out / picture).read_bytes()[:4] == b"\x89PNG"
    assert card.count("  subgraph ") == len(PAPER) and "license: other" in card
    assert all(manifest["configs"][name]["tokens"] > 0 for name in PAPER)
    assert all(f"of 4 pairs ({round(c['truncation']['rate'] * 100)}%)" in card for c in manifest["configs"].values())
