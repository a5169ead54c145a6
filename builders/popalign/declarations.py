"""How a user setting is declared: a dataclass field (`setting`) carrying its help text and its check (`Check`),
and the checks most settings share. `popalign.config` (build), `popalign.generation` (the generation settings),
`popalign.styles` and `popalign.commands` (the other commands) declare theirs with these; the command line, recipes
and the Python API are generated from the declarations.

>>> POSITIVE("concurrency", "8")
8
>>> POSITIVE("concurrency", 0)
Traceback (most recent call last):
...
popalign.errors.ConfigError: concurrency: expected a whole number >= 1, got 0
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from popalign.errors import ConfigError


@dataclass(frozen=True)
class Check:
    """What a setting's value must be: its type (`kind`), a test of the typed value, and the words that say what
    is expected; `parse` turns text (a flag's, a recipe's) into the type when plain conversion is not enough."""

    kind: type
    expected: str
    test: Callable[[Any], bool] = lambda value: True
    parse: Callable[[str], Any] | None = None
    #: How `--help` names a value of this kind.
    metavar: str = "VALUE"
    #: Turns a value of any form (a repeated flag's texts, a recipe's mapping) into the type, or raises ValueError.
    convert: Callable[[Any], Any] | None = None

    def __call__(self, key: str, value: Any) -> Any:
        """`value` as the setting's type, or a `ConfigError` naming the key, what is expected and what was given."""
        try:
            typed = self._typed(value)
            ok = self.test(typed)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{key}: expected {self.expected}, got {_shown(value)}")
        return typed

    def _typed(self, value: Any) -> Any:
        if self.convert:
            return self.convert(value)
        if isinstance(value, str) and self.parse:
            return self.parse(value.strip())
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(value, bool) or (self.kind is int and isinstance(value, float)):
            raise ValueError
        if self.kind in (str, Path) and not isinstance(value, str | Path):  # 2 is no shard, 123 no file
            raise ValueError
        if self.kind is str and isinstance(value, Path):  # a path stays a path (never read as a Hub dataset)
            return value
        typed = self.kind(value.strip() if isinstance(value, str) else value)
        if isinstance(typed, float) and not math.isfinite(typed):
            raise ValueError
        return typed


def _shown(value: Any) -> str:
    """A given value as errors show it: a number the same whether it came as text (a flag) or as a number."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return repr(value)
        return value.strip()
    return repr(value)


def one_of(options: Iterable[str]) -> Check:
    options = tuple(options)
    return Check(
        str, f"one of {', '.join(options)}", lambda value: value in options, metavar="{" + ",".join(options) + "}"
    )


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def _size(text: str) -> int:
    """A byte count such as `500MB`, `64KiB` or `1000000`."""
    match = _SIZE.match(text)
    if not match or not text.isascii():
        raise ValueError
    return int(float(match[1]) * _UNITS[(match[2] or "b").lower()])


POSITIVE = Check(int, "a whole number >= 1", lambda value: value >= 1, metavar="N")
NON_NEGATIVE = Check(int, "a whole number >= 0", lambda value: value >= 0, metavar="N")
SECONDS = Check(float, "a number of seconds > 0", lambda value: value > 0, metavar="SECONDS")
NUMBER = Check(float, "a number", metavar="X")
TEXT = Check(str, "text", lambda value: bool(value.strip()), metavar="TEXT")
FLAG = Check(bool, "true or false")
TEMPERATURE = Check(float, "a number >= 0 (0 is greedy)", lambda value: 0 <= value <= 100, metavar="T")
PATH = Check(Path, "a path", lambda value: str(value) != "")
SIZE = Check(int, "a size such as 500MB or 64KiB", lambda value: value >= 1, parse=_size)
SHARE = Check(float, "a share of the instructions, 0 <= F < 1", lambda value: 0 <= value < 1)
STOPS = Check(
    tuple,
    "up to 4 non-empty texts",
    lambda value: len(value) <= 4 and all(isinstance(text, str) and text for text in value),
    parse=lambda text: (text,),
    metavar="TEXT",
)
SHARD = Check(str, "K/N with 1 <= K <= N", lambda value: _is_shard(value))
SOURCES = Check(
    tuple,
    "prompt files or Hub datasets",
    lambda value: all(isinstance(text, str) and text.strip() for text in value),
    parse=lambda text: (text,),
    metavar="SOURCE",
)


def _is_shard(text: str) -> bool:
    match = re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip())
    return bool(match) and 1 <= int(match[1]) <= int(match[2])


def setting(
    default: Any = MISSING,
    *,
    help: str,
    check: Check | None = None,
    key: str | None = None,
    metavar: str | None = None,
    recipe: bool = True,
    cli: bool = True,
    negated: str | None = None,
    switch: bool = False,
    repeat: bool = False,
    positional: str | None = None,
    flag: str | None = None,
    saved: bool = True,
) -> Any:
    """A dataclass field that is a user setting: its default, help text and check; `key` is its flat name (default:
    the field's); `recipe=False` keeps it out of recipes (a secret, a per-run switch), `cli=False` off the command
    line; a boolean whose default is True is set on the command line by the flag `negated` (`--no-cache`), a
    `switch` (a group turned on with its defaults, `--score`) by its bare flag, and a `repeat` setting (a list) by
    its flag given once per value. A `positional` setting is a command's argument, not a flag (`"1"`: one value,
    `"?"`: one or none, `"+"`: one or more); `flag` is a flag other than `--key` (`-n`); `saved=False` keeps a
    recipe setting out of the recipe a build saves beside its data (the machine's and the run's: where it writes,
    its cache, its budget, where it publishes)."""
    metadata = {"help": help, "check": check, "key": key, "metavar": metavar, "recipe": recipe, "cli": cli}
    metadata |= {"negated": negated, "switch": switch, "repeat": repeat, "positional": positional, "flag": flag}
    metadata["saved"] = saved
    return field(default=default, metadata=metadata)


def check_fields(settings: Any) -> None:
    """Type and check every declared setting of a dataclass instance in place (its `__post_init__`)."""
    for item in declared(type(settings)):
        object.__setattr__(settings, item.name, checked(item, getattr(settings, item.name)))


def checked(item: Field[Any], value: Any) -> Any:
    """One setting's value, typed and checked as its declaration says. None stands for "not given" only where the
    default is None: for any other setting it is no way to ask for the default, and is refused."""
    check = item.metadata.get("check")
    if value is None:
        if item.default is not None:
            raise ConfigError(f"{key_of(item)}: expected {check.expected if check else 'a value'}, got None")
        return None
    return check(key_of(item), value) if check else value


def key_of(item: Field[Any]) -> str:
    """A setting's flat key: flag, recipe key and keyword."""
    return item.metadata.get("key") or item.name


def declared(cls: type) -> list[Field[Any]]:
    """The fields of a settings dataclass that are user settings."""
    return [item for item in fields(cls) if "help" in item.metadata]


def checked_values(cls: type, values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Some of `cls`'s settings (by field name), typed and checked, as a partial override; unknown names are
    refused as unknown settings."""
    known = {item.name: item for item in declared(cls)}
    result = {}
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"{where}{unknown_setting(name, known)}")
        try:
            result[name] = checked(known[name], value)
        except ConfigError as err:
            raise ConfigError(f"{where}{err}") from None
    return result


def unknown_setting(name: str, known: Iterable[str]) -> str:
    """The words for a setting nobody declared, with the nearest known one."""
    known = list(known)
    near = [key for key in known if key.startswith(name)][:1] or difflib.get_close_matches(name, known, n=1)
    return f"unknown setting {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
