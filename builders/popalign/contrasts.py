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

import hashlib
import re
import signal
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from popalign.errors import ConfigError, first_line
from popalign.styles import Styles

if TYPE_CHECKING:
    from popalign.generation import Generation, Request
    from popalign.prompts import Instruction

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
    "flagged-bad": "a reader flagged the pair bad (popalign review), left out by --flags apply",
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
#: The contrastive prompt pair (x+, x-) DLMA scores a row under, as two chats: from the row's instruction, the
#: build's context and the row itself (whose recorded reasoning may be part of a side's prompt).
Scoring = Callable[["Instruction", "StrategyContext", Mapping[str, Any]], tuple[list[dict], list[dict]]]
#: The paper's judges, whose pairwise accuracy per strategy a strategy may declare (`Strategy.paper_accuracy`).
PAPER_JUDGES = ("GPT-4", "PairRM")


def paper_judge(kind: str) -> str:
    """The paper's judge to compare a judge of this kind with: GPT-4 for an LLM, PairRM for a model judge.

    >>> paper_judge("llm"), paper_judge("pairwise"), paper_judge("reward-model")
    ('GPT-4', 'PairRM', 'PairRM')
    """
    return "GPT-4" if kind == "llm" else "PairRM"


@dataclass(frozen=True)
class Strategy:
    """A contrast strategy: its config name, what it contrasts (`KINDS`), the roles that write its two sides
    (chosen first, rejected last) and any helper roles (the `default` model unless given), the formulas of its two
    sides, its generator and description; the requests it makes per instruction at most (a number, or worked out
    from the run's context); the drop reasons and template files it adds, the files found in `template_dir`
    (None: popalign's own templates folder; a user's templates folder overrides them by name like the others).
    What others read of it: the prompt pair DLMA scores its rows under (`scoring`; None: the score contrast's,
    `--score-contrast`), the paper's accuracy of its pairs by judge (`paper_accuracy`, for the judge table and the
    card), and how a style other than the default writes its sides (`styled_sides`, by style key and value, for
    the card's table)."""

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
    scoring: Scoring | None = None
    paper_accuracy: Mapping[str, float] = field(default_factory=dict)
    styled_sides: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    @property
    def chosen_role(self) -> str:
        """The role whose model writes the chosen side."""
        return self.roles[0]

    @property
    def rejected_role(self) -> str:
        """The role whose model writes the rejected side."""
        return self.roles[-1]

    def sides(self, styles: Mapping[str, Any]) -> tuple[str, str]:
        """The chosen and rejected side as the card's table writes them, under a build's styles (by flat key)."""
        for (key, value), sides in self.styled_sides.items():
            if styles.get(key) == value:
                return sides
        return self.chosen, self.rejected

    def planned(self, ctx: StrategyContext) -> int:
        """The requests one instruction makes at most under this run's context (what the progress bar counts)."""
        return self.requests(ctx) if callable(self.requests) else self.requests


class Templates(Protocol):
    """What a strategy reads of a build's templates (`popalign.templates.TemplateSet` is popalign's): a template
    rendered with user text as data, and a data file's records."""

    def render(self, name: str, **variables: Any) -> str: ...

    def records(self, name: str, fields: tuple[str, ...]) -> list[dict[str, str]]: ...


class StrategyContext:
    """What strategies read besides the instruction: templates, their data files, the run's seed, whether pairs
    with a cut side are kept, the elicitive style (`guided`: plan, then an answer guided by it in a fresh
    context; `paper`: the paper's single-turn `Thought:` / `Response:` template), and the prefix style
    (`sentences`, or a set of response labels) with where a label goes (`prefill`: the assistant's own opening,
    where the backend continues a turn; else a system message)."""

    @property
    def prefix_placement(self) -> str:
        """Where `prefix` puts its contrast: `user` (a sentence), `prefill` or `system` (a response label)."""
        return "user" if self.styles.prefix == "sentences" else "prefill" if self.prefill else "system"

    def __init__(
        self,
        templates: Templates,
        seed: int = 0,
        *,
        keep_truncated: bool = False,
        styles: Styles = Styles(),  # noqa: B008 (frozen)
        prefill: bool = False,
    ) -> None:
        self.templates = templates
        self.seed = seed
        self.keep_truncated = keep_truncated
        self.styles, self.prefill = styles, prefill
        self.principles = templates.records("prefix_principles.yaml", ("positive", "negative"))
        self.labels = (
            templates.records(f"prefix_labels_{styles.prefix}.yaml", ("positive", "negative"))
            if styles.prefix != "sentences"
            else []
        )
        self.good_demos = templates.records("demon_good.jsonl", ("instruction", "response"))
        self.bad_demos = templates.records("demon_bad.jsonl", ("instruction", "response"))

    def pick(self, instruction: Instruction, count: int) -> int:
        """A per-instruction choice in `range(count)`, fixed by the seed."""
        digest = hashlib.sha256(f"{self.seed}:{instruction.prompt_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % count

    def cut(self, *generations: Generation) -> bool:
        """Whether to drop a pair as `truncated`: a generation stopped at the limit and cut pairs are not kept."""
        return not self.keep_truncated and any(generation.truncated for generation in generations)

    def unusable(self, *generations: Generation) -> Dropped | None:
        """Why a pair made from these generations is dropped before its text is read: one ended while still
        thinking (it has no answer: `unfinished-thinking`, whatever `keep_truncated` says), or one was cut at the
        token limit (`truncated`); None when every one is usable."""
        if any(generation.unfinished_thinking for generation in generations):
            return Dropped("unfinished-thinking")
        return Dropped("truncated") if self.cut(*generations) else None


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

    def paper_accuracy(self, judge: str) -> dict[str, float]:
        """The paper's accuracy per strategy for one of `PAPER_JUDGES`, of the strategies that declare one."""
        return {name: s.paper_accuracy[judge] for name, s in self.items() if judge in s.paper_accuracy}

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
    "scoring": lambda value: value is not None and not callable(value),
    "paper_accuracy": lambda value: (
        not isinstance(value, Mapping)
        or not all(
            judge in PAPER_JUDGES and isinstance(figure, float) and 0 <= figure <= 1 for judge, figure in value.items()
        )
    ),
    "styled_sides": lambda value: (
        not isinstance(value, Mapping) or not all(_is_pair(key) and _is_pair(sides) for key, sides in value.items())
    ),
}
_FIELD_KINDS = {
    "name": "text", "kind": "text", "roles": "a tuple of role names", "chosen": "text", "rejected": "text",
    "run": "a function", "description": "text", "requests": "a whole number of at least 1 or a function",
    "helper_roles": "a tuple of role names", "drop_reasons": "a mapping of text to text",
    "templates": "a mapping of text to text", "template_dir": "a Path or None", "scoring": "a function or None",
    "paper_accuracy": f"a mapping of {' or '.join(PAPER_JUDGES)} to a share from 0 to 1",
    "styled_sides": "a mapping of (style key, value) to (chosen, rejected) texts",
}  # fmt: skip


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(isinstance(item, str) for item in value)


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
