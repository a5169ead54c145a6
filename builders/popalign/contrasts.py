"""The contrast strategies a build can use: what a strategy declares (`Strategy`), what its run yields and
returns (`Pair`, `Dropped`), and the registry that finds every strategy, popalign's own and third-party ones
alike, through the `popalign.strategies` entry-point group.

A plugin is a package whose `pyproject.toml` names a `Strategy` object under that group; the entry point's
name is the strategy's config name:

    [project.entry-points."popalign.strategies"]
    concise = "my_package.contrasts:CONCISE"

Once installed it is a config like the built-in ones: `--strategies concise`, `all`, the card, `score`, `judge`,
mixtures and `popalign templates list`. A run is a generator: it yields the requests of one step, receives their
generations in order, and returns a `Pair` or a `Dropped`; the engine drives it (see `popalign.strategies`)."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from popalign.errors import ConfigError, first_line

if TYPE_CHECKING:
    from popalign.generation import Generation, Request
    from popalign.prompts import Instruction
    from popalign.strategies import StrategyContext

#: The entry-point group strategies are registered under.
ENTRY_POINTS = "popalign.strategies"
#: PopAlign's six contrasts, in the paper's order: the default selection (`paper`), listed first everywhere.
PAPER = ("prefix", "demon", "elicitive", "nparam", "leaderboard", "refine")
#: The roles of the paper's contrasts, in the order summaries and recipes list roles; a plugin's roles follow.
PAPER_ROLES = ("default", "large", "small", "first", "second", "planner", "reviser")
#: What a strategy contrasts: two prompts to one model, two models, two steps of a pipeline, or two samples.
KINDS = ("prompt", "model", "pipeline", "sampling")
#: Names a selection gives that are not strategies.
SELECTIONS = ("all", "paper")
#: Why a pair is not written, for every strategy; a strategy adds its own in `Strategy.drop_reasons`.
DROP_REASONS: dict[str, str] = {
    "truncated": "a side (or a generation it was written from) stopped at the token limit",
    "unfinished-thinking": "a side (or a generation it was written from) ended while still thinking: the token limit "
    "was reached inside its reasoning trace, or the trace was never closed, so there is no answer",
    "empty": "a side is empty",
    "identical": "both sides are the same text",
    "failed": "an endpoint refused a request for good",
    "too-long": "the conversation (with what the strategy adds to it) does not fit the model's context: a local "
    "model's with --max-new-tokens, or an endpoint's that refused it as too long",
    "contaminated": "the instruction is close to a prompt of a benchmark given to --decontaminate (before any request)",
    "near-duplicate": "the instruction is close to an earlier one of the input (--near-duplicates; before any request)",
}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Pair:
    """The two answers of one instruction and the roles that produced them; `truncated` marks a pair kept with
    a cut side (`--keep-truncated`). `chosen_reasoning`/`rejected_reasoning` are what guided each side (elicitive's
    plans), `chosen_thinking`/`rejected_thinking` each side's own reasoning trace (a thinking model's)."""

    chosen: str
    rejected: str
    chosen_role: str
    rejected_role: str
    chosen_reasoning: str | None = None
    rejected_reasoning: str | None = None
    truncated: bool = False
    chosen_thinking: str | None = None
    rejected_thinking: str | None = None
    #: The chosen side began with a line that only announced it (a revision's "Here's the improved version:"),
    #: taken off.
    preamble_removed: bool = False


@dataclass(frozen=True)
class Dropped:
    """A pair not written, and why: one of `DROP_REASONS` or of its strategy's own `drop_reasons`."""

    reason: str


StrategyRun = Generator["list[Request]", "list[Generation]", "Pair | Dropped"]


@dataclass(frozen=True)
class Strategy:
    """A contrast strategy: its config name, what it contrasts (`KINDS`), the roles that write its two sides
    (chosen first, rejected last) and any helper roles (the `default` model unless given), the formulas of its two
    sides, its generator and description; the requests it makes per instruction at most (a number, or worked out
    from the run's context); the drop reasons and template files it adds, the files found in `template_dir`
    (None: popalign's own templates folder; a user's templates folder overrides them by name like the others)."""

    name: str
    kind: str
    roles: tuple[str, ...]
    chosen: str
    rejected: str
    run: Callable[[Instruction, StrategyContext], StrategyRun]
    description: str
    requests: int | Callable[[StrategyContext], int] = 2
    helper_roles: tuple[str, ...] = ()
    drop_reasons: Mapping[str, str] = field(default_factory=dict)
    templates: Mapping[str, str] = field(default_factory=dict)
    template_dir: Path | None = None

    @property
    def chosen_role(self) -> str:
        """The role whose model writes the chosen side."""
        return self.roles[0]

    @property
    def rejected_role(self) -> str:
        """The role whose model writes the rejected side."""
        return self.roles[-1]

    def planned(self, ctx: StrategyContext) -> int:
        """The requests one instruction makes at most under this run's context (what the progress bar counts)."""
        return self.requests(ctx) if callable(self.requests) else self.requests


class StrategyRegistry(Mapping[str, Strategy]):
    """Every registered strategy by config name, loaded from the entry points on first use: the paper's six in
    `PAPER` order, popalign's other ones, then the plugins', each by name. A plugin that cannot load or declares
    itself badly is refused in one line naming its entry point."""

    def __init__(self, group: str = ENTRY_POINTS) -> None:
        self.group = group
        self._strategies: dict[str, Strategy] | None = None
        self._packages: dict[str, str] = {}

    def __getitem__(self, name: str) -> Strategy:
        return self._loaded()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def package(self, name: str) -> str:
        """The installed package that registers a strategy (`popalign` for its own)."""
        self._loaded()
        return self._packages[name]

    def roles(self) -> tuple[str, ...]:
        """Every role a registered strategy names: the paper's (`PAPER_ROLES`), then the plugins' own."""
        named = [role for s in self.values() for role in (*s.roles, *s.helper_roles)]
        return (*PAPER_ROLES, *dict.fromkeys(role for role in named if role not in PAPER_ROLES))

    def helper_roles(self) -> tuple[str, ...]:
        """The roles that are the `default` model unless given: every strategy's helper roles."""
        return tuple(dict.fromkeys(role for s in self.values() for role in s.helper_roles))

    def drop_reasons(self) -> dict[str, str]:
        """Every drop reason with its meaning: the common ones, then each strategy's own."""
        reasons = dict(DROP_REASONS)
        for strategy in self.values():
            reasons |= dict(strategy.drop_reasons)
        return reasons

    def template_files(self) -> list[tuple[str, str, Path | None, str]]:
        """The template files the strategies add: name, description, folder (None: popalign's) and strategy."""
        return [(name, text, s.template_dir, s.name) for s in self.values() for name, text in s.templates.items()]

    def _loaded(self) -> dict[str, Strategy]:
        if self._strategies is None:
            found: dict[str, Strategy] = {}
            for point in entry_points(group=self.group):
                where = f"strategy plugin {point.name!r} ({point.value})"
                try:
                    with interruptible():
                        strategy = point.load()
                except (Exception, SystemExit) as err:  # a plugin's own failure, whatever it is, named in one line
                    raise ConfigError(f"{where}: cannot load ({type(err).__name__}: {first_line(err)})") from err
                _check(strategy, point.name, where, found)
                found[point.name] = strategy
                self._packages[point.name] = point.dist.name if point.dist else point.module
            if not found:
                raise ConfigError(f"no strategies registered under {self.group!r}: is popalign installed?")
            order = sorted(found, key=lambda n: (n not in PAPER, self._packages[n] != "popalign", _rank(n), n))
            self._strategies = {name: found[name] for name in order}
        return self._strategies


def _rank(name: str) -> int:
    """Where a strategy of the paper's comes among them."""
    return PAPER.index(name) if name in PAPER else 0


def check_role(role: str, setting: str = "roles") -> None:
    """Refuse a role no registered strategy names, in a line naming the `setting` that gave it."""
    if role not in STRATEGIES.roles():
        raise ConfigError(f"{setting}: unknown role {role!r} (known: {', '.join(STRATEGIES.roles())})")


def _check(strategy: object, name: str, where: str, found: Mapping[str, Strategy]) -> None:
    """Refuse a registered object that is not a well-formed `Strategy` named as its entry point."""
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"{where}: expected a popalign.contrasts.Strategy, got {type(strategy).__name__}")
    for name_of, wrong in _FIELD_CHECKS.items():
        if wrong(getattr(strategy, name_of)):
            value = getattr(strategy, name_of)
            raise ConfigError(f"{where}: its {name_of} {first_line(repr(value))[:80]} is not {_FIELD_KINDS[name_of]}")
    if name in found:
        raise ConfigError(f"{where}: a second strategy named {name!r} (one is already registered)")
    problems = [
        (strategy.name != name, f"its name {strategy.name!r} differs from the entry point's"),
        (not _NAME.match(name) or name in SELECTIONS, "a config name is lowercase letters, digits and _"),
        (strategy.kind not in KINDS, f"kind {strategy.kind!r} is not one of {', '.join(KINDS)}"),
        (not 1 <= len(strategy.roles) <= 2, "it names one role (both sides) or two (chosen, rejected)"),
        (not all(_NAME.match(r) for r in (*strategy.roles, *strategy.helper_roles)), "a role name is lowercase"),
        (bool(set(strategy.drop_reasons) & set(DROP_REASONS)), "it redefines a common drop reason"),
    ]
    for bad, why in problems:
        if bad:
            raise ConfigError(f"{where}: {why}")


def _not_texts(value: object, container: type = tuple) -> bool:
    return not isinstance(value, container) or not all(isinstance(item, str) for item in value)


def _not_text_map(value: object) -> bool:
    return not isinstance(value, Mapping) or _not_texts([*value.keys(), *value.values()], list)


#: What each field of a declared `Strategy` must be, checked when it registers (a plugin's is not type-checked).
_FIELD_CHECKS: dict[str, Callable[[object], bool]] = {
    "name": lambda value: not isinstance(value, str),
    "kind": lambda value: not isinstance(value, str),
    "roles": _not_texts,
    "chosen": lambda value: not isinstance(value, str),
    "rejected": lambda value: not isinstance(value, str),
    "run": lambda value: not callable(value),
    "description": lambda value: not isinstance(value, str),
    "requests": lambda value: not callable(value) and (type(value) is not int or value < 1),
    "helper_roles": _not_texts,
    "drop_reasons": _not_text_map,
    "templates": _not_text_map,
    "template_dir": lambda value: value is not None and not isinstance(value, Path),
}
_FIELD_KINDS = {
    "name": "text", "kind": "text", "roles": "a tuple of role names", "chosen": "text", "rejected": "text",
    "run": "a function", "description": "text", "requests": "a whole number of at least 1 or a function",
    "helper_roles": "a tuple of role names", "drop_reasons": "a mapping of text to text",
    "templates": "a mapping of text to text", "template_dir": "a Path or None",
}  # fmt: skip


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C stops the strategy code run inside at once, even a loop that never gives the event loop a turn
    (asyncio's own handler only cancels the main task, which such a loop never lets happen)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


#: Every strategy, popalign's and the installed plugins'.
STRATEGIES = StrategyRegistry()
