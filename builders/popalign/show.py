"""Reading pairs in a terminal (`popalign show`): pick rows of a build by `--where` conditions and lay each pair
out one side after the other, or side by side, with its reasoning, score and judge verdict.

>>> matches({"strategy": "prefix", "score": 0.5}, [parse_condition("strategy=prefix"), parse_condition("score>0")])
True
"""

from __future__ import annotations

import operator
import re
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popalign.conversations import from_chat, transcript
from popalign.dataset.folder import open_manifest
from popalign.dataset.rows import iter_rows
from popalign.errors import ConfigError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONDITION = re.compile(r"^([a-z_]+)\s*(!=|>=|<=|=|>|<|~)\s*(.*)$", re.DOTALL)
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le,
}  # fmt: skip
#: Row fields a condition may name, and the type their values are compared as.
FIELDS = {
    "strategy": str, "prompt_id": str, "chosen_model": str, "rejected_model": str, "judge_verdict": str,
    "score": float, "score_per_token": float, "judge_margin": float, "swapped": bool, "prompt": str, "chosen": str,
    "rejected": str,
}  # fmt: skip


@dataclass(frozen=True)
class Condition:
    """`field OP value`: OP is one of = != > < >= <=, or `~` (the text contains the value, ignoring case)."""

    field: str
    op: str
    value: Any
    #: The condition as it was given.
    text: str = ""

    def __str__(self) -> str:
        return self.text

    def test(self, row: dict[str, Any]) -> bool:
        actual = _value(row, self.field)
        if self.op == "~":
            return actual is not None and str(self.value).lower() in str(actual).lower()
        if actual is None or self.value is None:  # `none` matches an empty field only
            return {"=": actual is self.value, "!=": actual is not self.value}.get(self.op, False)
        return _OPERATORS[self.op](actual, self.value)


def parse_condition(text: str) -> Condition:
    """A `--where` condition such as `strategy=elicitive`, `score<0`, `judge_verdict!=chosen`, `chosen~tide`;
    `none` stands for an empty field (`judge_verdict=none`).

    Raises:
        ConfigError: not `FIELD OP VALUE`, an unknown field, or a value of the wrong kind.
    """
    match = _CONDITION.match(text.strip())
    if not match:
        raise ConfigError(f"--where {text!r}: expected FIELD OP VALUE, for example score<0 or strategy=prefix")
    name, op, raw = match.groups()
    if name not in FIELDS:
        raise ConfigError(f"--where {text!r}: unknown field {name!r} (fields: {', '.join(FIELDS)})")
    if op == "~" or raw.strip().lower() != "none":
        return Condition(name, op, raw if op == "~" else _typed(text, name, raw.strip()), text.strip())
    if op not in ("=", "!="):
        raise ConfigError(f"--where {text!r}: an empty field is tested with = none or != none")
    return Condition(name, op, None, text.strip())


def matches(row: dict[str, Any], conditions: Sequence[Condition]) -> bool:
    """Whether a row meets every condition."""
    return all(condition.test(row) for condition in conditions)


def read_pairs(out: Path, config: str, conditions: Sequence[Condition], limit: int | None) -> Iterator[dict[str, Any]]:
    """The rows of `config` (`all`: every strategy's, in the manifest's order) that meet `conditions`, at most
    `limit` of them.

    Raises:
        NotABuildError: `out` is not a build.
        ConfigError: the build has no such config.
    """
    written = [name for name, config in open_manifest(out).configs.items() if config.rows]
    if config != "all" and config not in written:
        raise ConfigError(f"{out}: no config {config!r} (configs: all, {', '.join(written)})")
    shown = 0
    for name in written if config == "all" else [config]:
        for row in iter_rows(out, name):
            if limit is not None and shown >= limit:
                return
            if matches(row, conditions):
                shown += 1
                yield row


def format_pair(row: dict[str, Any], *, width: int = 100, side_by_side: bool = False) -> str:
    """One pair as text: the instruction, the chosen and the rejected answer (with their reasoning), and the
    score and judge verdict when the build has them."""
    head = f"── {row['strategy']} · {row['prompt_id'][:12]} "
    lines = [head + "─" * max(0, width - len(head)), *_wrap(_value(row, "prompt"), width)]
    chosen = _side("CHOSEN", row["chosen_model"], _value(row, "chosen"), row.get("chosen_reasoning"))
    rejected = _side("REJECTED", row["rejected_model"], _value(row, "rejected"), row.get("rejected_reasoning"))
    if side_by_side:
        column = (width - 3) // 2
        left = [line for part in chosen for line in _wrap(part, column)]
        right = [line for part in rejected for line in _wrap(part, column)]
        for a, b in zip(left + [""] * (len(right) - len(left)), right + [""] * (len(left) - len(right)), strict=True):
            lines.append(f"{a:<{column}} │ {b}")
    else:
        for part in [*chosen, *rejected]:
            lines.extend(_wrap(part, width))
    notes = []
    if row.get("score") is not None:
        notes.append(f"score {row['score']:+.3f} ({row.get('score_per_token') or 0:+.4f} per token)")
    if row.get("swapped"):
        notes.append("sides swapped by the score")
    if row.get("judge_verdict") is not None:
        margin = f", margin {row['judge_margin']:+.3f}" if row.get("judge_margin") is not None else ""
        notes.append(f"judge: {row['judge_verdict']}{margin}")
    if notes:
        lines.append(" · ".join(notes))
    return "\n".join(lines)


def _side(label: str, model: str, answer: str, reasoning: str | None) -> list[str]:
    parts = [f"{label} ({model})"]
    if reasoning:
        parts.append(f"[reasoning] {reasoning}")
    parts.append(answer)
    return parts


def printable(text: str) -> str:
    """`text` safe to print to a terminal: control characters other than newline and tab (an escape sequence that
    sets the title or colours, a carriage return that overwrites the line) are shown as `\\xNN` escapes.

    >>> printable("ok\\x1b]0;owned\\x07\\rline")
    'ok\\\\x1b]0;owned\\\\x07\\\\x0dline'
    """
    return _CONTROL.sub(lambda match: f"\\x{ord(match[0]):02x}", text)


def _wrap(text: str, width: int) -> list[str]:
    lines = []
    for paragraph in printable(text).split("\n"):
        lines.extend(textwrap.wrap(paragraph, width, replace_whitespace=False, drop_whitespace=True) or [""])
    return lines


def _value(row: dict[str, Any], name: str) -> Any:
    """A field's value; for `chosen` and `rejected`, the text of their one message, for `prompt` its text or its
    conversation as a transcript (each turn after its speaker)."""
    value = row.get(name)
    if name == "prompt" and value:
        return transcript(from_chat(value))
    return value[0]["content"] if name in ("chosen", "rejected") and value else value


def _typed(text: str, name: str, raw: str) -> Any:
    kind = FIELDS[name]
    if kind is bool:
        if raw.lower() not in ("true", "false"):
            raise ConfigError(f"--where {text!r}: {name} is true or false")
        return raw.lower() == "true"
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--where {text!r}: {name} is a number") from None
    return raw
