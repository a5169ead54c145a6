"""A training mixture of popalign configs.

The YAML `datasets:` list is the one TRL's `DatasetMixtureConfig` reads (`path`, `name`, `split`, `columns`,
`fraction`, ...), with the same meaning of `fraction`: shares of the mixture, normalised to sum to one, the
mixture as large as it can be without repeating a row. popalign adds what a reproducible run needs: a pinned
`revision` (per entry, or `dataset_revision` for all), exact `rows` counts, sampling with a seed instead of
taking the first rows, and optional row filters (off by default).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetNotFoundError
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

from popalign.config import FLAG_USES
from popalign.dataset.flags import applied_rows, read_flags
from popalign.dataset.folder import FLAGS_FILE, MANIFEST
from popalign.errors import PopAlignError


class MixtureError(PopAlignError):
    """A mixture names a config or revision that does not exist, or asks for impossible amounts."""


@dataclass
class MixtureEntry:
    """One config of the mixture: the arguments of `load_dataset`, then how much of it to take."""

    path: str
    name: str | None = None
    data_dir: str | None = None
    data_files: str | list[str] | dict[str, str] | None = None
    split: str = "train"
    columns: list[str] | None = None
    fraction: float | None = None
    rows: int | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        pinned = f"@{self.revision}" if self.revision else ""
        return f"{self.path}{pinned}:{self.name}" if self.name else f"{self.path}{pinned}"


@dataclass
class MixtureConfig:
    """Which configs to train on and how much of each; parsed by `TrlParser` next to `DPOConfig`."""

    datasets: list[MixtureEntry] = field(
        default_factory=list,
        metadata={"help": "Configs to mix: TRL's `datasets:` list, plus optional `revision` and `rows` per entry."},
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Revision (a version tag such as v1.0.0) for every entry that names none."}
    )
    test_split_size: float | None = field(
        default=None, metadata={"help": "Hold out this share of the mixture as a `test` split."}
    )
    filter_min_score: float | None = field(
        default=None, metadata={"help": "Keep only rows whose self-reward `score` is at least this (unscored: out)."}
    )
    filter_require_reasoning: bool = field(
        default=False, metadata={"help": "Drop elicitive rows that lack the reasoning of either side."}
    )
    filter_max_chars: int | None = field(
        default=None, metadata={"help": "Drop rows whose prompt plus longer response exceeds this many characters."}
    )
    curriculum: bool = field(
        default=False,
        metadata={
            "help": "Train easy to hard: rows are ranked by `curriculum_by` and cut into `curriculum_stages` "
            "buckets; stage 1 comes first (its configs mixed), then stage 2, and so on."
        },
    )
    curriculum_stages: int = field(default=3, metadata={"help": "Number of curriculum buckets (easy to hard)."})
    curriculum_by: str = field(
        default="score",
        metadata={
            "help": "What makes a pair easy: `score` (its per-token self-reward score, within its config), "
            "`judge_margin` (a reward-model or PairRM judge's margin, within its config), or `judge_accuracy` (its "
            "strategy's judged accuracy: the strategies the judge agrees with most come first, Xu et al.'s "
            "far-apart sources before close ones)."
        },
    )
    skip_missing: bool = field(
        default=False,
        metadata={"help": "Skip, with a one-line warning, a config the dataset does not have (else: stop)."},
    )
    flags: str = field(
        default="ignore",
        metadata={
            "help": "Readers' flags of a local build folder (popalign review): `apply` leaves out the pairs flagged "
            "bad and exchanges the sides of those flagged swapped; `ignore` trains on the pairs as built."
        },
    )

    def __post_init__(self) -> None:
        self.datasets = [MixtureEntry(**entry) if isinstance(entry, dict) else entry for entry in self.datasets]


@dataclass(frozen=True)
class MixturePart:
    """What one entry contributed: rows available, rows the filters removed, rows taken, and where readers' flags
    were applied, the pairs they left out and swapped."""

    label: str
    available: int
    filtered: int
    taken: int
    flagged: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Mixture:
    """The mixed splits (`train`, and `test` when asked) and what each entry contributed."""

    splits: datasets.DatasetDict
    parts: tuple[MixturePart, ...]

    def describe(self) -> list[str]:
        """One line per entry, then the total: what a training run is about to see."""
        lines = [
            f"mixture {part.label}: {part.taken} of {part.available} rows"
            + (f" ({part.filtered} filtered out)" if part.filtered else "")
            + (f"; readers' flags applied: {part.flagged[0]} left out, {part.flagged[1]} swapped" if any(part.flagged)
               else "")
            for part in self.parts
        ]  # fmt: skip
        return [*lines, f"mixture total: {sum(part.taken for part in self.parts)} rows"]


def load_mixture(config: MixtureConfig, *, seed: int = 0) -> Mixture:
    """Load, filter, sample and concatenate the entries of `config`.

    Example (a Hub dataset is named the same way: `"path": "org/popalign", "revision": "v1.0.0"`):
        >>> mixture = load_mixture(MixtureConfig(datasets=[
        ...     {"path": str(EXAMPLE), "name": "prefix", "fraction": 0.75},
        ...     {"path": str(EXAMPLE), "name": "elicitive", "fraction": 0.25},
        ... ]), seed=0)
        >>> from collections import Counter
        >>> sorted(Counter(mixture.splits["train"]["strategy"]).items())  # all 6 prefix rows, then 1/4 of 8
        [('elicitive', 2), ('prefix', 6)]
    """
    entries = [_pinned(entry, config.dataset_revision) for entry in config.datasets]
    _check_amounts(entries)
    if config.curriculum and config.curriculum_stages < 1:
        raise MixtureError(f"curriculum_stages must be at least 1, got {config.curriculum_stages}")
    if config.curriculum_by not in CURRICULA:
        raise MixtureError(f"curriculum_by: expected one of {', '.join(CURRICULA)}, got {config.curriculum_by!r}")
    if config.flags not in FLAG_USES:
        raise MixtureError(f"flags: expected one of {', '.join(FLAG_USES)}, got {config.flags!r}")
    if config.skip_missing:
        entries = _present(entries)
    keep = _row_filter(config)
    pools, filtered, flagged = [], [], []
    for index, entry in enumerate(entries):
        rows = _load(index, entry)
        loaded = len(rows)
        rows, swapped = _flagged(rows, entry) if config.flags == "apply" else (rows, 0)
        flagged.append((loaded - len(rows), swapped))
        kept = rows.filter(keep, batched=True) if keep else rows
        filtered.append(len(rows) - len(kept))
        pools.append(kept.shuffle(seed=seed))
    counts = _counts(entries, pools)
    taken = [pool.select(range(count)) for pool, count in zip(pools, counts, strict=True)]
    if sum(counts) == 0:
        raise MixtureError("the mixture has no rows left to train on (check the filters and the configs)")
    if config.curriculum:
        accuracy = _strategy_accuracy(pools, entries) if config.curriculum_by == "judge_accuracy" else {}
        taken = [
            _with_stages(part, config.curriculum_stages, _where(i, e), config.curriculum_by, accuracy)
            for i, (part, e) in enumerate(zip(taken, entries, strict=True))
        ]
    taken = [
        part.select_columns([*e.columns, *([STAGE] if config.curriculum else [])]) if e.columns else part
        for part, e in zip(taken, entries, strict=True)
    ]
    mixed = datasets.concatenate_datasets(taken)
    both = both_sides(mixed)
    if both:
        print(f"warning: the mixture holds {both} answers as chosen in one pair and as rejected in another of the "
              "same instruction (a build with --share-answers shares the plain answer M(q) between strategies); "
              "DPO then pushes each both up and down", file=sys.stderr)  # fmt: skip
    if config.test_split_size is None:
        splits = datasets.DatasetDict({"train": mixed})
    else:
        splits = mixed.train_test_split(test_size=config.test_split_size, seed=seed)
    if config.curriculum:
        splits = datasets.DatasetDict(
            {name: split.shuffle(seed=seed).sort(STAGE).remove_columns(STAGE) for name, split in splits.items()}
        )
    parts = tuple(
        MixturePart(entry.label, len(pool) + dropped, dropped, count, flags)
        for entry, pool, dropped, count, flags in zip(entries, pools, filtered, counts, flagged, strict=True)
    )
    return Mixture(splits=splits, parts=parts)


def both_sides(rows: datasets.Dataset) -> int:
    """How many answers are chosen in one row and rejected in another row of the same instruction."""
    if "prompt_id" not in rows.column_names:
        return 0
    sides: dict[tuple[str, int], set[str]] = {}  # by instruction and the answer's hash: memory stays small
    for batch in rows.select_columns(["prompt_id", "chosen", "rejected"]).iter(batch_size=1024):
        for prompt_id, chosen, rejected in zip(batch["prompt_id"], batch["chosen"], batch["rejected"], strict=True):
            sides.setdefault((prompt_id, hash(chosen[-1]["content"])), set()).add("chosen")
            sides.setdefault((prompt_id, hash(rejected[-1]["content"])), set()).add("rejected")
    return sum(len(seen) == 2 for seen in sides.values())


STAGE = "curriculum_stage"
#: What a curriculum ranks pairs by, and the column it reads.
CURRICULA = {"score": "score_per_token", "judge_margin": "judge_margin", "judge_accuracy": "judge_verdict"}
_NEEDS = {
    "score": "a per-token self-reward score on every row: run `popalign score`",
    "judge_margin": "a judge's margin on every row: run `popalign judge --judge-reward-model` (a reward model or "
    "PairRM)",
    "judge_accuracy": "a judge's verdicts: run `popalign judge`",
}


def _with_stages(
    rows: datasets.Dataset, stages: int, where: str, by: str = "score", accuracy: dict[str, float] | None = None
) -> datasets.Dataset:
    """`rows` with their curriculum stage (0 = easiest). By `score` or `judge_margin`: their rank by that measure
    (largest first) within this config, cut into `stages` equal buckets, so every stage holds each config's easiest
    share rather than one strategy's. By `judge_accuracy`: their strategy's rank by `accuracy` (highest first)
    among the mixture's strategies, cut into `stages` buckets of strategies."""
    if not len(rows):
        return rows.add_column(STAGE, [])
    if by == "judge_accuracy":
        accuracy = accuracy or {}
        unjudged = sorted(set(rows["strategy"]) - set(accuracy))
        if unjudged:
            raise MixtureError(f"{where}: a curriculum by judge_accuracy needs judged pairs of {unjudged[0]}")
        ranked = sorted(accuracy, key=lambda name: (-accuracy[name], name))
        return rows.add_column(STAGE, [ranked.index(name) * stages // len(ranked) for name in rows["strategy"]])
    column = CURRICULA[by]
    if column not in rows.column_names or None in rows[column]:
        raise MixtureError(f"{where}: a curriculum by {by} needs {_NEEDS[by]}")
    values = rows[column]
    order = sorted(range(len(rows)), key=lambda i: -values[i])
    stage = [0] * len(rows)
    for rank, index in enumerate(order):
        stage[index] = rank * stages // len(rows)
    return rows.add_column(STAGE, stage)


def _strategy_accuracy(pools: list[datasets.Dataset], entries: list[MixtureEntry]) -> dict[str, float]:
    """Each strategy's judged accuracy over every row of the mixture's pools: chosen wins / (wins + losses + ties),
    as the card reports it; a row the judge did not decide on (unparsed, failed) does not count."""
    wins: dict[str, int] = {}
    judged: dict[str, int] = {}
    for index, (pool, entry) in enumerate(zip(pools, entries, strict=True)):
        if "judge_verdict" not in pool.column_names:
            needs = _NEEDS["judge_accuracy"]
            raise MixtureError(f"{_where(index, entry)}: a curriculum by judge_accuracy needs {needs}")
        for name, verdict in zip(pool["strategy"], pool["judge_verdict"], strict=True):
            if verdict in ("chosen", "rejected", "tie"):
                judged[name] = judged.get(name, 0) + 1
                wins[name] = wins.get(name, 0) + (verdict == "chosen")
    return {name: wins[name] / judged[name] for name in judged}


def _present(entries: list[MixtureEntry]) -> list[MixtureEntry]:
    """The entries whose config exists; each missing one is skipped with a warning saying why it is missing."""
    kept = []
    for index, entry in enumerate(entries):
        try:
            names = datasets.get_dataset_config_names(entry.path, revision=entry.revision, data_dir=entry.data_dir)
        except (DatasetNotFoundError, FileNotFoundError, RevisionNotFoundError):
            names = None  # reported by `_load`
        if names is not None and entry.name is not None and entry.name not in names:
            print(f"warning: skipping {_where(index, entry)}: {_missing_reason(entry, names)}", file=sys.stderr)
            continue
        kept.append(entry)
    return kept


def _missing_reason(entry: MixtureEntry, names: list[str]) -> str:
    """Why a popalign dataset has no such config: what its manifest says of that strategy's pairs."""
    configs = _manifest_configs(entry)
    counts = (configs or {}).get(entry.name)
    if counts is not None and not counts.get("rows"):
        dropped = counts.get("dropped", {})
        total = sum(dropped.values())
        reasons = " and ".join(f"{n} as {reason}" for reason, n in sorted(dropped.items(), key=lambda kv: -kv[1]))
        return f"no config {entry.name!r}: all {total} pairs were dropped ({reasons})"
    if configs is not None and entry.name not in configs:
        return f"no config {entry.name!r}: this build did not run that strategy; the configs are {', '.join(names)}"
    return f"no config {entry.name!r}; the configs are {', '.join(names)}"


def _manifest_configs(entry: MixtureEntry) -> dict[str, Any] | None:
    """The per-strategy counts of a popalign build's manifest, from a local folder or the Hub, if it has one."""
    try:
        if Path(entry.path).is_dir():
            manifest = Path(entry.path) / MANIFEST
        else:
            manifest = Path(hf_hub_download(entry.path, MANIFEST, repo_type="dataset", revision=entry.revision))
        return json.loads(manifest.read_text(encoding="utf-8"))["configs"]
    except (OSError, ValueError, KeyError, HfHubHTTPError):
        return None


def _pinned(entry: MixtureEntry, revision: str | None) -> MixtureEntry:
    if entry.revision or not revision:
        return entry
    return MixtureEntry(**{**entry.__dict__, "revision": revision})


def _where(index: int, entry: MixtureEntry) -> str:
    return f"datasets[{index}] ({entry.label})"


def _check_amounts(entries: list[MixtureEntry]) -> None:
    if not entries:
        raise MixtureError("the mixture is empty: list at least one config under `datasets:` or give --dataset_name")
    for index, entry in enumerate(entries):
        if entry.fraction is not None and not 0 < entry.fraction <= 1:
            raise MixtureError(f"{_where(index, entry)}: fraction {entry.fraction} is outside (0, 1]")
        if entry.rows is not None and (isinstance(entry.rows, bool) or not isinstance(entry.rows, int)):
            raise MixtureError(f"{_where(index, entry)}: rows must be a whole number, got {entry.rows!r}")
        if entry.rows is not None and entry.rows < 1:
            raise MixtureError(f"{_where(index, entry)}: rows {entry.rows} must be at least 1")
        if entry.rows is not None and entry.fraction is not None:
            raise MixtureError(f"{_where(index, entry)}: give fraction or rows, not both")
    with_fraction = [entry.fraction is not None for entry in entries]
    if any(with_fraction) and not all(with_fraction):
        raise MixtureError("fraction must be given for every entry of the mixture or for none (as in TRL)")


def _load(index: int, entry: MixtureEntry) -> datasets.Dataset:
    where = _where(index, entry)
    if entry.revision and Path(entry.path).is_dir():
        raise MixtureError(f"{where}: {entry.path} is a local folder; a revision pins a Hub repository")
    try:
        names = datasets.get_dataset_config_names(entry.path, revision=entry.revision, data_dir=entry.data_dir)
        if entry.name is not None and entry.name not in names:
            raise MixtureError(f"{where}: {_missing_reason(entry, names)} (skip it with skip_missing: true)")
        rows = datasets.load_dataset(
            entry.path,
            entry.name,
            revision=entry.revision,
            data_dir=entry.data_dir,
            data_files=entry.data_files,
            split=entry.split,
        )
    except RevisionNotFoundError:
        raise MixtureError(f"{where}: {entry.path} has no revision {entry.revision!r}") from None
    except (DatasetNotFoundError, FileNotFoundError):
        raise MixtureError(f"{where}: no dataset at {entry.path!r}") from None
    except ValueError as error:
        if "split" in str(error).lower():
            raise MixtureError(f"{where}: no split {entry.split!r}") from None
        raise
    if entry.columns:
        missing = sorted(set(entry.columns) - set(rows.column_names))
        if missing:
            raise MixtureError(f"{where}: no column {', '.join(map(repr, missing))}")
    return rows


def _flagged(rows: datasets.Dataset, entry: MixtureEntry) -> tuple[datasets.Dataset, int]:
    """A local build's rows with its readers' flags applied (`popalign.dataset.flags.applied_rows`), and how many
    were swapped; the rows of any other dataset as they are (flags are the build folder's: a version pushed with
    `--flags apply` carries them applied)."""
    folder = Path(entry.path)
    if not (folder / FLAGS_FILE).is_file() or "prompt_id" not in rows.column_names:
        return rows, 0
    kept, swapped = applied_rows(rows.to_list(), read_flags(folder))
    if len(kept) == len(rows) and not swapped:
        return rows, 0
    return datasets.Dataset.from_list(kept, features=rows.features), swapped


def _counts(entries: list[MixtureEntry], pools: list[datasets.Dataset]) -> list[int]:
    """Rows to take from each pool: TRL's normalised fractions, exact `rows`, or everything."""
    sizes = [len(pool) for pool in pools]
    if entries and entries[0].fraction is not None:
        weights = [entry.fraction / sum(e.fraction for e in entries) for entry in entries]
        total = min(size / weight for size, weight in zip(sizes, weights, strict=True))
        return [min(size, round(weight * total)) for size, weight in zip(sizes, weights, strict=True)]
    for index, (entry, size) in enumerate(zip(entries, sizes, strict=True)):
        if entry.rows is not None and entry.rows > size:
            raise MixtureError(f"{_where(index, entry)}: asks for {entry.rows} rows but has {size} to give")
    return [size if entry.rows is None else entry.rows for entry, size in zip(entries, sizes, strict=True)]


def _row_filter(config: MixtureConfig) -> Callable[[dict[str, list[Any]]], list[bool]] | None:
    """A batched `Dataset.filter` predicate for the filters that are on, or None when none is."""
    if config.filter_min_score is None and not config.filter_require_reasoning and config.filter_max_chars is None:
        return None

    def keep(batch: dict[str, list[Any]]) -> list[bool]:
        verdicts = []
        for i in range(len(batch["prompt"])):
            ok = True
            if config.filter_min_score is not None:
                score = batch["score"][i]
                ok = score is not None and score >= config.filter_min_score
            if ok and config.filter_require_reasoning and batch["strategy"][i] == "elicitive":
                ok = bool(batch["chosen_reasoning"][i]) and bool(batch["rejected_reasoning"][i])
            if ok and config.filter_max_chars is not None:
                prompt = sum(len(m["content"]) for m in batch["prompt"][i])
                longer = max(sum(len(m["content"]) for m in batch[side][i]) for side in ("chosen", "rejected"))
                ok = prompt + longer <= config.filter_max_chars
            verdicts.append(ok)
        return verdicts

    return keep
