"""Readers' flags on a build's pairs (`popalign review`): the file that holds them, what they say of each strategy,
and what they do to rows.

A reader marks a pair `good` (the chosen answer is the better one), `bad` (leave the pair out) or `swapped` (the
rejected answer is the better one), with an optional note. Flags live in `review_flags.json` in the build folder,
written whole and renamed into place, with the sha256 of their content inside, so a hand edit is refused in one
line as a tampered Parquet file is. A flag is keyed by reader, config and `prompt_id`, and holds the digest of the
pair it was given on: a rebuild that keeps the pair keeps the flag; one that changed its answers leaves the flag
`stale`, shown but never acted on.

>>> pair = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
...         "rejected": [{"role": "assistant", "content": "k"}], "prompt_id": "p1", "strategy": "prefix",
...         "chosen_model": "big", "rejected_model": "small"}
>>> flag = Flag(reader="ana", config="prefix", prompt_id="p1", pair=pair_digest(pair), mark="swapped")
>>> rows, swapped = applied_rows([pair], Flags([flag]))
>>> rows[0]["chosen"][0]["content"], swapped
('k', 1)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from popalign.dataset.folder import FLAGS_FILE, config_dir, write_json
from popalign.dataset.records import ReviewRecord, StrategyReview
from popalign.dataset.rows import iter_rows
from popalign.errors import ConfigError, TamperedBuildError
from popalign.intervals import wilson

MARKS = ("good", "bad", "swapped")
#: What a reader may be called: a short name, kept apart from every other reader's flags.
_READER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
MAX_NOTE = 2000


def pair_digest(row: Mapping[str, Any]) -> str:
    """What a flag was given on: the sha256 of the row's conversation and its two answers, as the build wrote them."""
    chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
    text = json.dumps([row["prompt"], chosen, rejected], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def is_reader(name: Any) -> bool:
    """Whether `name` may name a reader: up to 40 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    return isinstance(name, str) and bool(_READER.fullmatch(name))


def check_reader(reader: Any) -> str:
    """A reader's name, or a ConfigError saying what one may be."""
    if not is_reader(reader):
        raise ConfigError(f"reader: expected a name of letters, digits, '.', '_' or '-' (up to 40), got {reader!r}")
    return reader


@dataclass(frozen=True)
class Flag:
    """One reader's mark on one pair, and the digest of the pair as it was read."""

    reader: str
    config: str
    prompt_id: str
    pair: str
    mark: str
    note: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return self.reader, self.config, self.prompt_id

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Flag:
        """A flag of the file, checked.

        Raises:
            ValueError: a field missing or of the wrong kind, a mark that is not one of `MARKS` (naming it).
        """
        names = ("reader", "config", "prompt_id", "pair", "mark", "note")
        if not isinstance(data, dict) or set(data) != set(names):
            raise ValueError(f"{where} is not a flag (fields: {', '.join(names)})")
        if not all(isinstance(data[name], str) for name in names):
            raise ValueError(f"{where}: every field of a flag is text")
        if data["mark"] not in MARKS:
            raise ValueError(f"{where}: mark {data['mark']!r} is not one of {', '.join(MARKS)}")
        check_reader(data["reader"])
        return cls(**data)


@dataclass(frozen=True)
class Flags:
    """Every flag of a build, by key."""

    flags: list[Flag] = field(default_factory=list)

    def current(self, config: str, rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Flag]]:
        """The flags of one config's rows that were given on the pair as it is now, by `prompt_id`."""
        digests = {row["prompt_id"]: pair_digest(row) for row in rows}
        found: dict[str, list[Flag]] = {}
        for flag in self.flags:
            if flag.config == config and digests.get(flag.prompt_id) == flag.pair:
                found.setdefault(flag.prompt_id, []).append(flag)
        return found

    def with_flag(self, flag: Flag) -> Flags:
        """These flags with `flag` in place of the same reader's flag on the same pair."""
        return Flags([other for other in self.flags if other.key != flag.key] + [flag])

    def without(self, key: tuple[str, str, str]) -> Flags:
        """These flags but one reader's on one pair (a mark taken back)."""
        return Flags([flag for flag in self.flags if flag.key != key])

    def readers(self) -> list[str]:
        return sorted({flag.reader for flag in self.flags})


def read_flags(folder: Path) -> Flags:
    """The flags of a build folder (none where it has no flags file).

    Raises:
        TamperedBuildError: the file is unreadable, not a flags file, or its content is not what popalign wrote.
    """
    path = folder / FLAGS_FILE
    if not path.is_file():
        return Flags()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("flags"), list) or "sha256" not in data:
            raise ValueError("not a popalign flags file")
        if data["sha256"] != _digest(data["flags"]):
            raise ValueError("its content is not what popalign wrote (its sha256 differs)")
        flags = [Flag.from_dict(item, f"flag {index + 1}") for index, item in enumerate(data["flags"])]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TamperedBuildError(f"{path}: unreadable ({err}); remove it to start the review again") from err
    except (ValueError, ConfigError) as err:
        raise TamperedBuildError(f"{path}: {err}; remove it to start the review again") from err
    keys = Counter(flag.key for flag in flags)
    if twice := next((key for key, count in keys.items() if count > 1), None):
        raise TamperedBuildError(f"{path}: {twice[0]} flagged {twice[1]} {twice[2]} twice; remove it to start again")
    return Flags(flags)


def write_flags(folder: Path, flags: Flags) -> None:
    """Write the flags whole, with their digest, renamed into place (a reader never sees half of the file)."""
    items = [asdict(flag) for flag in sorted(flags.flags, key=lambda flag: flag.key)]
    write_json(folder / FLAGS_FILE, {"format": 1, "flags": items, "sha256": _digest(items)})


def _digest(items: list[Any]) -> str:
    return hashlib.sha256(json.dumps(items, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def verdict(flags: list[Flag]) -> str | None:
    """What the flags on one pair do: `bad` where any reader says so, else `swapped` where a reader says so (and
    none says good), else None."""
    marks = {flag.mark for flag in flags}
    if "bad" in marks:
        return "bad"
    return "swapped" if marks == {"swapped"} else None


def applied_rows(rows: Iterable[dict[str, Any]], flags: Flags) -> tuple[list[dict[str, Any]], int]:
    """Rows (of any configs: each is its `strategy`'s) with their current flags applied: bad pairs left out, swapped
    pairs' sides (and models) exchanged, with `swapped` turned, as a DLMA swap turns it; and how many were
    swapped."""
    rows = list(rows)
    current = {
        (config, prompt_id): given
        for config in {row["strategy"] for row in rows}
        for prompt_id, given in flags.current(config, [row for row in rows if row["strategy"] == config]).items()
    }
    kept, swapped = [], 0
    for row in rows:
        action = verdict(current.get((row["strategy"], row["prompt_id"]), []))
        if action == "bad":
            continue
        if action == "swapped":
            swapped += 1
            row = {**row, "chosen": row["rejected"], "rejected": row["chosen"], "swapped": not row.get("swapped")}
            row |= {"chosen_model": row["rejected_model"], "rejected_model": row["chosen_model"]}
        kept.append(row)
    return kept, swapped


def review_record(
    folder: Path, configs: Iterable[str], rows: Mapping[str, list[dict[str, Any]]] | None = None
) -> ReviewRecord | None:
    """What the readers' flags of `folder` say of each of its `configs` (None where nobody has flagged a pair):
    per strategy, pairs read, marks, how often readers say the chosen side is better (good against swapped and
    bad), agreement between two readers of one pair, and with the judge where it decided and the reader said good
    or swapped; and how many flags a rebuild left stale. `rows` are the configs' rows where the caller holds them
    (else they are read)."""
    flags = read_flags(folder)
    if not flags.flags:
        return None
    summary, current_count = {}, 0
    for config in configs:
        if rows is not None:
            config_rows = rows.get(config, [])
        else:
            config_rows = list(iter_rows(folder, config)) if config_dir(folder, config).is_dir() else []
        current = flags.current(config, config_rows)
        current_count += sum(len(given) for given in current.values())
        if not current:
            continue
        verdicts = {row["prompt_id"]: row.get("judge_verdict") for row in config_rows}
        marks = Counter(flag.mark for given in current.values() for flag in given)
        decided = sum(marks.values())
        agreeing = [len({flag.mark for flag in given}) == 1 for given in current.values() if len(given) > 1]
        with_judge = [
            (flag.mark == "good") == (verdicts[prompt_id] == "chosen")
            for prompt_id, given in current.items()
            for flag in given
            if flag.mark != "bad" and verdicts.get(prompt_id) in ("chosen", "rejected")
        ]
        summary[config] = StrategyReview(
            read=len(current),
            marks={mark: marks[mark] for mark in MARKS},
            chosen_better=round(marks["good"] / decided, 4) if decided else None,
            interval=wilson(marks["good"], decided),
            readers_agree=(sum(agreeing), len(agreeing)),
            judge_agrees=(sum(with_judge), len(with_judge)),
        )
    return ReviewRecord(readers=flags.readers(), configs=summary, stale=len(flags.flags) - current_count)


def carry_flags(out: Path, folder: Path) -> None:
    """Put the flags of the build at `out` into `folder`, the staged build that replaces it (flags on pairs that
    stay the same survive the rewrite; the others turn stale)."""
    if (out / FLAGS_FILE).is_file() and not (folder / FLAGS_FILE).exists():
        read_flags(out)  # a tampered file is refused, not carried
        shutil.copy2(out / FLAGS_FILE, folder / FLAGS_FILE)


def clean_note(note: str) -> str:
    """A reader's note as kept: at most `MAX_NOTE` characters, without control characters but newlines and tabs."""
    return "".join(ch for ch in note if ch in "\n\t" or ch.isprintable())[:MAX_NOTE]
