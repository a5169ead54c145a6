"""One config's rows on disk: appended to a JSONL file as they finish, with the figures the manifest and card
need, so a build holds none of them in memory until the `datasets` builder turns the file into Parquet."""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
        self.example: dict[str, str] | None = None
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
        if self.example is None:
            self.example = {side: row[side][0]["content"][:EXAMPLE_CHARS] for side in ("prompt", "chosen", "rejected")}

    def close(self) -> None:
        self._file.close()

    def read(self) -> list[dict[str, Any]]:
        """Every row, in the order added (the spool is closed first)."""
        self.close()
        with self.path.open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines]

    def describe(self) -> dict[str, Any]:
        """Mean answer lengths and the first row's texts, as the manifest records them."""
        return {
            "chosen_chars": round(self._chosen_chars / self.count),
            "rejected_chars": round(self._rejected_chars / self.count),
            "example": self.example,
        }
