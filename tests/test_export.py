"""`popalign export DIR --format llamafactory`: LLaMA-Factory's ranking data and its `dataset_info.json`, read
back the way LLaMA-Factory reads a local dataset (the entry's `file_name` through `datasets`' json builder, then
its sharegpt ranking rules: a first `system` turn is the system prompt, then turns alternate from `human`, each side
one `gpt` turn); LLaMA-Factory itself is not
installed here, so its rules are written out in `helpers.read_like_llamafactory`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import POPALIGN, build, load, read_like_llamafactory, run_offline


@pytest.mark.slow
def test_an_export_reads_as_llamafactory_ranking_data(scripted, tmp_path: Path) -> None:
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix,elicitive", "--test-size", "0.3",
                        tags=["ok", "aaa", "bbb", "ccc", "ddd", "eee", "fff", "ggg", "hhh", "iii"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    exported = run_offline(POPALIGN, "export", out, "--format", "llamafactory", "--out", tmp_path / "lf")
    assert exported.returncode == 0, exported.stderr
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert sorted(info) == ["popalign_elicitive", "popalign_elicitive_test", "popalign_prefix", "popalign_prefix_test"]
    for config in ("prefix", "elicitive"):
        exported_rows = read_like_llamafactory(tmp_path / "lf", f"popalign_{config}")
        assert [(row["conversations"][0]["value"], row["chosen"]["value"], row["rejected"]["value"])
                for row in exported_rows] == [(row["prompt"][0]["content"], row["chosen"][0]["content"],
                                               row["rejected"][0]["content"]) for row in load(out, config)]  # fmt: skip
        assert read_like_llamafactory(tmp_path / "lf", f"popalign_{config}_test")  # the held-out split, as its own
    again = run_offline(POPALIGN, "export", out, "--out", tmp_path / "lf")
    assert again.returncode == 2 and "export into a new one" in again.stderr
