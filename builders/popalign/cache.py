"""A content-addressed SQLite store of finished generations; each answer is committed as it arrives."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from popalign.errors import PopAlignError


def default_cache_dir() -> Path:
    """`$POPALIGN_CACHE`, else `$XDG_CACHE_HOME/popalign`, else `~/.cache/popalign`."""
    if os.environ.get("POPALIGN_CACHE"):
        return Path(os.environ["POPALIGN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "popalign"


class GenerationCache:
    """Maps a request key (see `generation.request_key`) to the generated text.

    >>> cache = GenerationCache(Path("/tmp/popalign-doc-cache"))
    >>> cache.put_many({"k": "hello"}); cache.get_many(["k", "missing"])
    {'k': 'hello'}
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "generations.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT NOT NULL, created REAL)"
            )
        except (OSError, sqlite3.Error) as err:
            raise PopAlignError(f"{self.path}: cannot open the generation cache ({err})") from err

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The cached texts of those keys that have one."""
        found: dict[str, str] = {}
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT key, text FROM generations WHERE key IN ({marks})"
            found.update(self._db.execute(query, chunk).fetchall())
        return found

    def put_many(self, answers: dict[str, str]) -> None:
        """Store answers in one transaction, committed at once so a killed run keeps them."""
        now = time.time()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO generations (key, text, created) VALUES (?, ?, ?)",
                [(key, text, now) for key, text in answers.items()],
            )
