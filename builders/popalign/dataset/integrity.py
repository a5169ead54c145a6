"""A build folder checked against its manifest before anything passes it on (`push`, `merge`, `export`): each config
is a strategy, each file is a regular file of a name popalign writes, each Parquet file opens with the row schema,
the row counts the manifest records and rows of its config's strategy, and every file has the content the build
wrote (its sha256 in the manifest)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from popalign.config import LICENSE_FILE
from popalign.contrasts import STRATEGIES
from popalign.dataset.flags import read_flags
from popalign.dataset.folder import (
    CARD,
    DATA,
    FLAGS_FILE,
    MANIFEST,
    RECIPE,
    SHARD_NAME,
    SPLITS,
    Manifest,
    config_dir,
    file_digests,
)
from popalign.dataset.quality import JUDGE_CHART, OVERVIEW, score_chart
from popalign.dataset.records import ConfigRecord
from popalign.errors import TamperedBuildError
from popalign.templates import registered_files


def check_build(out: Path, manifest: Manifest) -> None:
    """Refuse a folder whose files are not exactly those its manifest describes.

    Raises:
        TamperedBuildError: naming the first file (or manifest entry) that does not match.
    """
    for name in manifest.configs:
        if name not in STRATEGIES:
            raise _tampered(out / MANIFEST, f"config {name!r} is not a strategy (known: {', '.join(STRATEGIES)})")
    allowed = _allowed_files(manifest)
    for path in _walk(out):
        relative = path.relative_to(out).as_posix()
        if relative not in allowed and not _is_shard_of(relative, manifest):
            raise _tampered(path, "a file popalign did not write")
    for name, config in manifest.configs.items():
        _check_config(out, name, config)
    _check_digests(out, manifest)
    read_flags(out)  # readers' flags, checked by their own digest


def _check_digests(out: Path, manifest: Manifest) -> None:
    """Every file the manifest records, with the content it records; no other file."""
    if manifest.digests is None:
        raise _tampered(out / MANIFEST, "records no file digests (written by an earlier popalign)")
    found = file_digests(out)
    for relative, digest in manifest.digests.items():
        if relative not in found:
            raise _tampered(out / relative, "missing, though the manifest records it")
        if found[relative] != digest:
            raise _tampered(out / relative, "its content is not what the build wrote (its sha256 differs)")
    unrecorded = sorted(set(found) - set(manifest.digests))
    if unrecorded:
        raise _tampered(out / unrecorded[0], "a file the manifest does not record")


def _allowed_files(manifest: Manifest) -> set[str]:
    """The names of every file but the Parquet shards that a build with this manifest may hold."""
    charts = {*OVERVIEW.values(), JUDGE_CHART, *(score_chart(name) for name in manifest.configs)}
    return {
        MANIFEST, RECIPE, CARD, LICENSE_FILE, FLAGS_FILE, *charts, *(f"templates/{name}" for name in registered_files())
    }  # fmt: skip


def _is_shard_of(relative: str, manifest: Manifest) -> bool:
    parts = relative.split("/")
    return (
        len(parts) == 3 and parts[0] == DATA and parts[1] in manifest.configs and bool(SHARD_NAME.fullmatch(parts[2]))
    )


def _walk(out: Path) -> list[Path]:
    """Every file under `out`, refusing a link or anything but files and folders (links are never followed)."""
    files = []
    for folder, names, filenames in os.walk(out):
        for entry in sorted([*names, *filenames]):
            path = Path(folder) / entry
            if path.is_symlink():
                raise _tampered(path, "a symbolic link; a build holds only its own files")
            if not path.is_dir() and not path.is_file():
                raise _tampered(path, "not a regular file")
            if path.is_file():
                files.append(path)
    return files


def _check_config(out: Path, name: str, config: ConfigRecord) -> None:
    """A config's shards: numbered 0..N-1 of N per split, each with the row schema, together the recorded
    counts; a config with no rows has no files."""
    import pyarrow
    import pyarrow.parquet

    from popalign.dataset.schema import features

    expected = _split_counts(out, name, config)
    folder = config_dir(out, name)
    if not config.rows:
        if folder.exists():
            raise _tampered(folder, "holds files but the manifest records no rows")
        return
    schema = features().arrow_schema
    for split in SPLITS:
        shards = sorted(folder.glob(f"{split}-*.parquet")) if folder.is_dir() else []
        counts = {SHARD_NAME.fullmatch(path.name)["count"] for path in shards}  # type: ignore[index]
        numbers = [int(SHARD_NAME.fullmatch(path.name)["index"]) for path in shards]  # type: ignore[index]
        if len(counts) > 1 or numbers != list(range(len(shards))) or (counts and int(counts.pop()) != len(shards)):
            raise _tampered(folder, f"its {split} shards are not numbered 0..N-1 of N")
        rows = 0
        for path in shards:
            try:
                parquet = pyarrow.parquet.ParquetFile(path)
                written = parquet.schema_arrow.remove_metadata()
                missing = [column for column in schema.names if column not in written.names]
                if missing and set(missing) <= set(LATER_COLUMNS) and written.names == _without(schema, missing).names:
                    raise _tampered(path, f"written by an earlier popalign (no `{missing[0]}` column)")
                if not written.equals(schema):
                    raise _tampered(path, "its columns are not popalign's row schema")
                strategies = parquet.read(columns=["strategy"]).column("strategy").unique().to_pylist()
                rows += parquet.metadata.num_rows
            except (OSError, pyarrow.ArrowException) as err:
                raise _tampered(path, f"not a readable Parquet file ({str(err).splitlines()[0]})") from err
            others = sorted(set(strategies) - {name}, key=str)
            if others:
                raise _tampered(path, f"holds {others[0]!r} rows in the {name} config")
        if rows != expected.get(split, 0):
            where = shards[0] if shards else folder / f"{split}-*.parquet"
            recorded = expected.get(split, 0)
            raise _tampered(where, f"{name} {split} holds {rows} rows but the manifest records {recorded}")


#: Columns of the row schema that later releases added: a file without them was written by an earlier popalign.
LATER_COLUMNS = ("margin", "chosen_thinking", "rejected_thinking")


def _without(schema: Any, columns: list[str]) -> Any:
    """An Arrow schema without some of its columns."""
    for column in columns:
        schema = schema.remove(schema.get_field_index(column))
    return schema


def _split_counts(out: Path, name: str, config: ConfigRecord) -> dict[str, int]:
    """Rows per split as the manifest records them (every row is in `train` unless a test share was set), checked
    against its total and against the `dataset_info` the card gives `load_dataset`."""
    from popalign.dataset.schema import features

    splits = config.splits or {"train": config.rows}
    if set(splits) - set(SPLITS) or sum(splits.values()) != config.rows:
        raise _tampered(out / MANIFEST, f"config {name!r}: its split counts do not add up to its {config.rows} rows")
    info = config.dataset_info
    if config.rows and info is not None:
        recorded = {split.get("name"): split.get("num_examples") for split in info.get("splits", [])}
        if recorded != {split: count for split, count in splits.items() if count}:
            raise _tampered(out / MANIFEST, f"config {name!r}: its dataset_info splits differ from its row counts")
        if info.get("features") != features()._to_yaml_list():
            raise _tampered(out / MANIFEST, f"config {name!r}: its dataset_info features are not the row schema")
    return splits


def _tampered(path: Path, reason: str) -> TamperedBuildError:
    return TamperedBuildError(f"{path}: {reason}; rebuild the folder")
