"""A build exported for trainers that do not read TRL's format: LLaMA-Factory's ranking data (`sharegpt`
formatting with `ranking: true`), one JSON file per config and split, and the `dataset_info.json` that names them.

OpenRLHF and xtuner read the build as it is (TRL's explicit-prompt conversational preference format).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from popalign.dataset.folder import SPLITS, config_dir, open_manifest
from popalign.dataset.integrity import check_build
from popalign.errors import ConfigError, NotABuildError

FORMATS = ("llamafactory",)
#: LLaMA-Factory's names for the sides of a turn in `sharegpt` formatting.
_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def export_build(folder: Path, out: Path, *, format: str = "llamafactory", prefix: str = "popalign") -> dict[str, int]:
    """Write `folder`'s configs into `out` in `format`; return the rows written per dataset name
    (`<prefix>_<config>`, and `_test` for a test split), as `dataset_info.json` names them.

    Raises:
        NotABuildError: `folder` is not a build, or `out` holds something else, lies inside it or cannot be written.
        TamperedBuildError: a file of `folder` is not what its manifest records (nothing is written).
        ConfigError: an unknown format.
    """
    import pyarrow.parquet  # loaded when rows are read

    if format not in FORMATS:
        raise ConfigError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    manifest = open_manifest(folder)
    check_build(folder, manifest)
    if out.absolute().resolve().is_relative_to(folder.absolute().resolve()):
        raise NotABuildError(f"{out}: inside the build {folder}; export into a folder of its own")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NotABuildError(f"{out}: exists and is not an empty folder; export into a new one")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise NotABuildError(f"{out}: cannot create the export folder ({err.strerror})") from err
    info: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for name, config in manifest.configs.items():
        for split in SPLITS:
            files = sorted(config_dir(folder, name).glob(f"{split}-*.parquet")) if config.rows else []
            rows = [row for file in files for row in pyarrow.parquet.read_table(file).to_pylist()]
            if not rows:
                continue
            dataset = f"{prefix}_{name}" + ("" if split == "train" else f"_{split}")
            _write(out / f"{dataset}.json", json.dumps([_ranking(row) for row in rows], ensure_ascii=False, indent=1))
            info[dataset] = {
                "file_name": f"{dataset}.json",
                "formatting": "sharegpt",
                "ranking": True,
                "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
            }
            counts[dataset] = len(rows)
    _write(out / "dataset_info.json", json.dumps(info, indent=2))
    return counts


def _write(path: Path, text: str) -> None:
    """One file of the export, refused in one line where it cannot be written (a read-only or full disk)."""
    try:
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as err:
        raise NotABuildError(f"{path}: cannot write the export ({err.strerror})") from err


def _ranking(row: dict[str, Any]) -> dict[str, Any]:
    """One pair as LLaMA-Factory's ranking example: the prompt's turns, then each side's answer."""
    turns = [{"from": _ROLES[turn["role"]], "value": turn["content"]} for turn in row["prompt"]]
    chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
    return {"conversations": turns, "chosen": {"from": "gpt", "value": chosen},
            "rejected": {"from": "gpt", "value": rejected}}  # fmt: skip
