"""A content-addressed SQLite store of finished generations; each answer is committed as it arrives."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from popalign.errors import PopAlignError
from popalign.generation import Generation


def default_cache_dir() -> Path:
    """`$POPALIGN_CACHE`, else `$XDG_CACHE_HOME/popalign`, else `~/.cache/popalign`."""
    if os.environ.get("POPALIGN_CACHE"):
        return Path(os.environ["POPALIGN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "popalign"


def open_cache(enabled: bool, folder: str | Path | None) -> GenerationCache | None:
    """The generation cache in `folder` (default: `default_cache_dir()`), or None when caching is off."""
    return GenerationCache(Path(folder) if folder else default_cache_dir()) if enabled else None


class GenerationCache:
    """Maps a request key (see `generation.request_key`) to the generation (text, tokens, finish reason); the
    scorer keeps its log-probabilities here as plain texts.

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
            # a commit reaches the operating system at once, so a killed run keeps it; only a machine crash
            # could lose the last answers, which a rerun makes again
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, text TEXT NOT NULL, created REAL)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(generations)")}
            added = (("finish", "TEXT"), ("tokens", "INTEGER"), ("prompt_tokens", "INTEGER"))
            added += (("reasoning", "TEXT"), ("reasoning_tokens", "INTEGER"))
            for column, kind in added:
                if column not in columns:  # caches written before finish reasons (or prompt tokens, ...) were kept
                    self._db.execute(f"ALTER TABLE generations ADD COLUMN {column} {kind}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS models (backend TEXT NOT NULL, name TEXT NOT NULL, weights TEXT NOT NULL, "
                "seen REAL, PRIMARY KEY (backend, name, weights))"
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

    def get_generation(self, key: str) -> Generation | None:
        """The cached generation of a request key; entries without a finish reason (older caches) count as
        missing, so their truncation is known after a rerun (an entry from before prompt tokens were kept counts
        none, and one from before reasoning traces were kept has none)."""
        row = self._db.execute(
            "SELECT text, tokens, finish, prompt_tokens, reasoning, reasoning_tokens FROM generations "
            "WHERE key = ? AND finish IS NOT NULL",
            (key,),
        ).fetchone()
        return Generation(row[0], row[1] or 0, row[2], row[3] or 0, row[4] or "", row[5] or 0) if row else None

    def put_generation(self, key: str, generation: Generation) -> None:
        """Store one generation, committed at once so a killed run keeps it."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO generations "
                "(key, text, created, finish, tokens, prompt_tokens, reasoning, reasoning_tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    generation.text,
                    time.time(),
                    generation.finish_reason,
                    generation.tokens,
                    generation.prompt_tokens,
                    generation.reasoning,
                    generation.reasoning_tokens,
                ),
            )

    def has(self, key: str) -> bool:
        """Whether an answer is cached under `key`."""
        return self._db.execute("SELECT 1 FROM generations WHERE key = ?", (key,)).fetchone() is not None

    def seen_model(self, backend: str, name: str, weights: str) -> str | None:
        """Record that a model of this name ran with these weights, and return the weights it last ran with before,
        where they differ (its cached answers are another model's), else None."""
        with self._db:
            earlier = self._db.execute(
                "SELECT weights FROM models WHERE backend = ? AND name = ? ORDER BY seen DESC LIMIT 1", (backend, name)
            ).fetchone()
            self._db.execute(
                "INSERT OR REPLACE INTO models (backend, name, weights, seen) VALUES (?, ?, ?, ?)",
                (backend, name, weights, time.time()),
            )
        return earlier[0] if earlier and earlier[0] != weights else None

    def put_many(self, answers: dict[str, str]) -> None:
        """Store answers in one transaction, committed at once so a killed run keeps them."""
        now = time.time()
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO generations (key, text, created) VALUES (?, ?, ?)",
                [(key, text, now) for key, text in answers.items()],
            )
