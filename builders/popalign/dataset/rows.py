"""One config's rows on disk: appended to a JSONL file as they finish, with the figures the manifest and card
need, so a build holds none of them in memory until the `datasets` builder turns the file into Parquet."""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rapidfuzz.distance import Levenshtein

from popalign.conversations import from_chat, transcript
from popalign.dataset.folder import SPLITS, Manifest, config_dir, config_files, split_file
from popalign.dataset.quality import write_overview
from popalign.dataset.records import ConfigRecord
from popalign.errors import PopAlignError

EXAMPLE_CHARS = 400


class RowSpool:
    """Rows appended to `path`, counted as they go.

    >>> spool = RowSpool(Path("rows/prefix.jsonl"))  # doctest: +SKIP
    >>> spool.add(row); spool.count  # doctest: +SKIP
    1
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._chosen_chars = self._rejected_chars = 0
        self.words: tuple[array[int], array[int]] = (array("I"), array("I"))  # chosen, rejected answer lengths
        self.edits: tuple[array[float], array[float]] = (array("d"), array("d"))  # edit similarity, length ratio
        self.example: dict[str, str] | None = None
        self.turns: Counter[int] = Counter()  # prompts by their user and assistant turns
        self.with_system = 0  # prompts with a system turn
        self._file = path.open("w", encoding="utf-8")

    @classmethod
    def of(cls, rows: Iterable[dict[str, Any]], path: Path) -> RowSpool:
        """A closed spool of rows held in memory."""
        spool = cls(path)
        for row in rows:
            spool.add(row)
        spool.close()
        return spool

    def add(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += 1
        self._chosen_chars += len(row["chosen"][0]["content"])
        self._rejected_chars += len(row["rejected"][0]["content"])
        for side, lengths in zip(("chosen", "rejected"), self.words, strict=True):
            lengths.append(len(row[side][0]["content"].split()))
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        self.edits[0].append(Levenshtein.normalized_similarity(chosen, rejected))
        self.edits[1].append(len(chosen) / max(1, len(rejected)))
        self.turns[sum(turn["role"] != "system" for turn in row["prompt"])] += 1
        self.with_system += row["prompt"][0]["role"] == "system"
        if self.example is None:
            prompt = transcript(from_chat(row["prompt"]))
            answers = {side: row[side][0]["content"][:EXAMPLE_CHARS] for side in ("chosen", "rejected")}
            self.example = {"prompt": prompt[:EXAMPLE_CHARS], **answers}

    def close(self) -> None:
        self._file.close()

    def read(self) -> list[dict[str, Any]]:
        """Every row, in the order added (the spool is closed first)."""
        self.close()
        with self.path.open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines]

    def describe(self) -> dict[str, Any]:
        """Mean answer lengths, how far each chosen answer is from its rejected one (`edits`: the median edit
        similarity, 1 − Levenshtein distance / the longer length, and the median and largest chosen / rejected
        length ratio, and the share of pairs whose chosen side is over 1.5 times as long), the first row's texts
        (a conversation as a transcript), and, where a prompt is more than one user turn, how many prompts have
        each number of turns (`turns`) and a system turn (`system_turns`), as the manifest records them."""
        similarity, ratio = self.edits
        conversations = set(self.turns) != {1} or self.with_system
        return {
            "chosen_chars": round(self._chosen_chars / self.count),
            "rejected_chars": round(self._rejected_chars / self.count),
            "edits": {
                "similarity_median": round(statistics.median(similarity), 3),
                "length_ratio_median": round(statistics.median(ratio), 2),
                "length_ratio_max": round(max(ratio), 2),
                "over_half_longer": round(sum(value > 1.5 for value in ratio) / len(ratio), 3),
            },
            "example": self.example,
            **(
                {"turns": {str(n): self.turns[n] for n in sorted(self.turns)}, "system_turns": self.with_system}
                if conversations
                else {}
            ),
        }


@dataclass
class StrategyOutcome:
    """Rows written and pairs dropped (by reason) for one strategy; `cut_kept` counts pairs kept with a side
    cut at the token limit (`--keep-truncated`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    cut_kept: int = 0
    spool: RowSpool | None = None  # a build's rows, on disk as they finish, where none need to be in memory

    @property
    def count(self) -> int:
        """Rows written (or to be written)."""
        return self.spool.count if self.spool else len(self.rows)

    def truncation(self) -> dict[str, Any]:
        """How many pairs had a side cut at the token limit (dropped or kept), of all pairs made."""
        made = self.count + sum(self.dropped.values())
        cut = self.dropped.get("truncated", 0) + self.cut_kept
        return {"pairs": made, "cut": cut, "rate": round(cut / made, 4) if made else 0.0}


def read_outcomes(out: Path, manifest: Manifest) -> dict[str, StrategyOutcome]:
    """Every config of a built folder as its rows and drop counts, to rewrite it (score, judge)."""
    return {
        name: StrategyOutcome(
            rows=read_rows(out, name) if config.rows else [],
            dropped=Counter(config.dropped),
            cut_kept=config.cut_kept(),
        )
        for name, config in manifest.configs.items()
    }


def iter_rows(out: Path, name: str, splits: tuple[str, ...] = SPLITS) -> Iterator[dict[str, Any]]:
    """The rows of one config of a build (of `splits`), file by file (`train` first), as Parquet holds them."""
    import pyarrow.parquet  # loaded when rows are read, not on start-up

    for file in config_files(out, name, splits):
        yield from pyarrow.parquet.read_table(file).to_pylist()


def read_rows(out: Path, name: str) -> list[dict[str, Any]]:
    """Every row of one config, with the columns a later step adds (score, judge) filled in where missing."""
    rows = iter_rows(out, name)
    defaults = {"swapped": False, "score_per_token": None, "margin": 0.0, "judge_verdict": None, "judge_margin": None}
    defaults |= {"chosen_thinking": None, "rejected_thinking": None}
    return [{**defaults, **row} for row in rows]


def require_rows(outcomes: dict[str, StrategyOutcome], out: Path, failures: Sequence[str] = ()) -> None:
    """Refuse to write a build with no rows at all, saying why its pairs were dropped (and, where requests were
    refused, the commonest reasons given)."""
    if not any(outcome.count for outcome in outcomes.values()):
        dropped = sum((outcome.dropped for outcome in outcomes.values()), Counter())
        counts = ", ".join(f"{reason} {count}" for reason, count in dropped.most_common()) or "no pairs made"
        why = f"; refused: {'; '.join(failures[:3])}" if failures else ""
        raise PopAlignError(
            f"{out}: every pair was dropped, nothing to write (dropped: {counts}{why}); answers are cached"
        )


def write_configs(
    outcomes: dict[str, StrategyOutcome], out: Path, shard_size: int, test_size: float = 0.0
) -> dict[str, ConfigRecord]:
    """Run the builder for each strategy and place its Parquet under `data/<strategy>/`: `train-00000-of-00001.parquet`
    (and `test-…` with a `test_size`), or `train-0000K-of-0000N.parquet` where a split is larger than `shard_size`
    bytes."""
    from popalign.dataset.builder import PopAlign  # datasets loads when there is something to write

    configs = {
        name: ConfigRecord(rows=0, dropped=dict(outcome.dropped), truncation=outcome.truncation())
        for name, outcome in outcomes.items()
    }
    lengths: dict[str, tuple[list[int], list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="popalign-") as staging:
        for name, outcome in outcomes.items():
            spool = outcome.spool or RowSpool.of(outcome.rows, Path(staging) / f"{name}.jsonl")
            lengths[name] = (list(spool.words[0]), list(spool.words[1]))
            if not spool.count:
                continue  # `datasets` cannot load a config with no rows: it is reported, not written
            builder = PopAlign(
                config_name=name, rows_file=str(spool.path), test_size=test_size, cache_dir=str(Path(staging) / "cache")
            )
            prepared = Path(staging) / "prepared" / name
            builder.download_and_prepare(output_dir=str(prepared), file_format="parquet", max_shard_size=shard_size)
            config_dir(out, name).mkdir(parents=True)
            splits = {split.name: split.num_examples for split in builder.info.splits.values()}
            for split in SPLITS:
                shards = sorted(prepared.glob(f"*-{split}*.parquet")) if splits.get(split) else []
                for index, parquet in enumerate(shards):
                    shutil.move(parquet, split_file(out, name, split, index, len(shards)))
            info = builder.info._to_yaml_dict()
            # a split with no rows has no files: the card's `dataset_info` leaves it out, as its `configs:` do, or
            # `load_dataset` would expect it (ExpectedMoreSplitsError)
            info["splits"] = [split for split in info.get("splits", []) if split.get("num_examples")]
            configs[name] = replace(
                configs[name],
                rows=spool.count,
                splits=splits if test_size else None,
                **spool.describe(),
                dataset_info={key: info[key] for key in ("features", "splits", "dataset_size") if key in info},
            )
    write_overview(lengths, configs, out)
    return configs


def keep_sides(configs: dict[str, ConfigRecord], before: dict[str, ConfigRecord]) -> dict[str, ConfigRecord]:
    """Rewritten configs with what making their pairs recorded (the models of each side, the tokens generated and
    their cost, thinking, shapes, preambles) as an earlier manifest has it (`ConfigRecord.generation`)."""
    return {name: replace(config, **before[name].generation()) for name, config in configs.items()}
