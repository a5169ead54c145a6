"""The `datasets` builder: one versioned config per strategy, rows read from the pipeline's staged JSONL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets

from popalign.contrasts import STRATEGIES
from popalign.dataset.schema import features
from popalign.prompts import in_test_split

VERSION = datasets.Version("1.0.0")

_CITATION = """\
@article{wang2024popalign,
  title={PopAlign: Diversifying Contrasting Patterns for a More Comprehensive Alignment},
  author={Wang, Zekun and others},
  journal={arXiv preprint arXiv:2410.13785},
  year={2024}
}"""


@dataclass
class PopAlignConfig(datasets.BuilderConfig):
    """One strategy's config; `rows_file` is the JSONL of assembled rows the pipeline staged, `test_size` the
    share of instructions whose rows form the `test` split (0: a `train` split only)."""

    rows_file: str | None = None
    test_size: float = 0.0


class PopAlign(datasets.GeneratorBasedBuilder):
    """PopAlign contrastive preference pairs, one config per contrast strategy.

    >>> builder = PopAlign(config_name="prefix", rows_file="rows/prefix.jsonl", cache_dir="cache")  # doctest: +SKIP
    >>> builder.download_and_prepare(file_format="parquet")  # doctest: +SKIP
    """

    BUILDER_CONFIG_CLASS = PopAlignConfig
    #: rows per Parquet row group, `datasets`' own choice for text, which the Hub's dataset viewer reads a group at
    #: a time; a shard is closed at the first row group past `max_shard_size`. (Groups of 100 rows made the Parquet
    #: footer, kept in memory until a file is closed, grow a build's peak memory by a third at 100,000 rows.)
    DEFAULT_WRITER_BATCH_SIZE = 1000
    BUILDER_CONFIGS: ClassVar[list[PopAlignConfig]] = [
        PopAlignConfig(name=name, version=VERSION, description=strategy.description)
        for name, strategy in STRATEGIES.items()
    ]

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description=self.config.description, features=features(), citation=_CITATION)

    def _split_generators(self, dl_manager: datasets.DownloadManager) -> list[datasets.SplitGenerator]:
        rows_file = self.config.rows_file
        if not rows_file or not Path(rows_file).is_file():
            raise ValueError(f"config {self.config.name!r} expects a staged rows file (.jsonl), got {rows_file!r}")
        if not self.config.test_size:
            return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"rows_file": rows_file})]
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"rows_file": rows_file, "test": split == "test"})
            for split in (datasets.Split.TRAIN, datasets.Split.TEST)
        ]

    def _generate_examples(self, rows_file: str, test: bool | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        with open(rows_file, encoding="utf-8") as handle:
            for index, line in enumerate(handle):
                row = json.loads(line)
                if test is None or in_test_split(row["prompt_id"], self.config.test_size) == test:
                    yield index, row
