"""A config larger than `--max-shard-size` is written as `train-0000K-of-0000N.parquet` files, with row groups of
1,000 rows (a shard closes at a row group's end), and every reader (load_dataset, judge's rewrite, merge) reads
all of them."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet
import pytest

from helpers import POPALIGN, build, load, manifest, run_offline, tags

COUNT = 2100


def shards(out: Path, name: str) -> list[Path]:
    files = sorted((out / "data" / name).iterdir())
    assert [file.name for file in files] == [f"train-{k:05d}-of-{len(files):05d}.parquet" for k in range(len(files))]
    return files


@pytest.mark.slow
def test_a_config_larger_than_a_shard_is_split_and_read_whole(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "prefix", "--max-shard-size", "40KB", tags=tags(COUNT))
    assert result.returncode == 0, result.stderr
    files = shards(out, "prefix")
    assert len(files) > 1
    for file in files:
        metadata = pyarrow.parquet.ParquetFile(file).metadata
        assert all(metadata.row_group(g).num_rows <= 1000 for g in range(metadata.num_row_groups))
    assert sum(pyarrow.parquet.ParquetFile(file).metadata.num_rows for file in files) == COUNT
    rows = load(out, "prefix")
    assert len(rows) == COUNT and len(set(rows["prompt_id"])) == COUNT
    assert len(load(out, "all")) == COUNT
    assert manifest(out)["max_shard_size"] == 40_000 and manifest(out)["configs"]["prefix"]["rows"] == COUNT
    # a rewrite reads every shard and writes them again with the build's shard size
    judged = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--no-cache", "--no-progress",
                         HF_HUB_OFFLINE="0")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    assert len(shards(out, "prefix")) == len(files)
    rows = load(out, "prefix")
    assert len(rows) == COUNT and None not in rows["judge_verdict"]


@pytest.mark.slow
def test_parts_of_many_shards_merge_whole(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    parts = []
    for k in (1, 2):
        result, part = build(tmp_path, url, "--strategies", "prefix", "--max-shard-size", "20KB", "--shard", f"{k}/2",
                             tags=tags(COUNT), out=f"part{k}")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert len(shards(part, "prefix")) > 1
        parts.append(part)
    merged = run_offline(POPALIGN, "merge", *parts, "--out", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr
    assert len(shards(tmp_path / "merged", "prefix")) > 1
    rows = load(tmp_path / "merged", "prefix")
    assert len(rows) == COUNT and len(set(rows["prompt_id"])) == COUNT
    bad = run_offline(POPALIGN, "build", "--max-shard-size", "big", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "max_shard_size: expected a size" in bad.stderr and not (tmp_path / "x").exists()
