"""The six PopAlign contrast strategies.

Each strategy is a generator: it yields the requests of one step, receives their answers, and finally
returns a `Pair` or a `Dropped`. The engine drives all of them in lockstep, so requests of every
instruction and strategy are batched together and identical requests are generated once.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass

from popalign.errors import ConfigError
from popalign.generation import Request, assistant, user
from popalign.models import ROLES
from popalign.prompts import Instruction
from popalign.templates import TemplateSet


@dataclass(frozen=True)
class Pair:
    """The two answers of one instruction and the roles that produced them."""

    chosen: str
    rejected: str
    chosen_role: str
    rejected_role: str
    chosen_reasoning: str | None = None
    rejected_reasoning: str | None = None


@dataclass(frozen=True)
class Dropped:
    """A pair not written, and why: `empty`, `identical` or `unparseable`."""

    reason: str


StrategyRun = Generator[list[Request], list[str], Pair | Dropped]


class StrategyContext:
    """What strategies read besides the instruction: templates, their data files, and the run's seed."""

    def __init__(self, templates: TemplateSet, seed: int = 0) -> None:
        self.templates = templates
        self.seed = seed
        self.principles = templates.records("prefix_principles.yaml", ("positive", "negative"))
        self.good_demos = templates.records("demon_good.jsonl", ("instruction", "response"))
        self.bad_demos = templates.records("demon_bad.jsonl", ("instruction", "response"))

    def pick(self, instruction: Instruction, count: int) -> int:
        """A per-instruction choice in `range(count)`, fixed by the seed."""
        digest = hashlib.sha256(f"{self.seed}:{instruction.prompt_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Strategy:
    """A contrast strategy: its config name, the roles it generates with, and its generator."""

    name: str
    kind: str
    roles: tuple[str, ...]
    chosen: str
    rejected: str
    run: Callable[[Instruction, StrategyContext], StrategyRun]
    description: str
    requests: int = 2  # per instruction, at most (what the progress bar counts)

    @property
    def chosen_role(self) -> str:
        """The role whose model writes the chosen side."""
        return self.roles[0]

    @property
    def rejected_role(self) -> str:
        """The role whose model writes the rejected side."""
        return self.roles[-1]


_LABEL = re.compile(r"^\s*\**\s*(?:improved response|response|answer)\s*\**\s*:\s*\**\s*", re.IGNORECASE)
_NEXT_EXAMPLE = re.compile(r"\n\s*Request\s*:", re.IGNORECASE)
REPEAT_RATIO = 0.9


def clean_answer(text: str) -> str:
    """Strip a leading `Response:` label and anything after the model starts a new `Request:` example."""
    text = _NEXT_EXAMPLE.split(text, maxsplit=1)[0]
    return _LABEL.sub("", text, count=1).strip()


def check_pair(pair: Pair) -> Pair | Dropped:
    """Drop a pair with an empty side or two sides that are the same text."""
    chosen, rejected = clean_answer(pair.chosen), clean_answer(pair.rejected)
    if not chosen or not rejected:
        return Dropped("empty")
    if " ".join(chosen.split()).casefold() == " ".join(rejected.split()).casefold():
        return Dropped("identical")
    return Pair(chosen, rejected, pair.chosen_role, pair.rejected_role, pair.chosen_reasoning, pair.rejected_reasoning)


def parse_elicited(reasoning: str, answer: str) -> tuple[str, str] | None:
    """The (reasoning, answer) of one elicitive side, or None when either is missing or the answer only
    repeats the reasoning (a near-copy: similarity ratio at least `REPEAT_RATIO`)."""
    reasoning, answer = reasoning.strip(), clean_answer(answer)
    if not reasoning or not answer:
        return None
    if difflib.SequenceMatcher(None, reasoning, answer, autojunk=False).ratio() >= REPEAT_RATIO:
        return None
    return reasoning, answer


def _prefix(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    principle = ctx.principles[ctx.pick(instruction, len(ctx.principles))]
    good, bad = (
        ctx.templates.render("prefix.jinja", principle=principle[side], instruction=instruction.text)
        for side in ("positive", "negative")
    )
    chosen, rejected = yield [Request("default", (user(good),)), Request("default", (user(bad),))]
    return check_pair(Pair(chosen, rejected, "default", "default"))


def _demon(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    good, bad = (
        ctx.templates.render("demon.jinja", demonstrations=demos, instruction=instruction.text)
        for demos in (ctx.good_demos, ctx.bad_demos)
    )
    chosen, rejected = yield [Request("default", (user(good),)), Request("default", (user(bad),))]
    return check_pair(Pair(chosen, rejected, "default", "default"))


def _elicitive(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    asks = [
        user(ctx.templates.render(f"elicitive_{side}.jinja", instruction=instruction.text)) for side in ("good", "bad")
    ]
    plans = yield [Request("default", (ask,)) for ask in asks]
    if not all(plan.strip() for plan in plans):
        return Dropped("unparseable")
    then = user(ctx.templates.render("elicitive_answer.jinja", instruction=instruction.text))
    answers = yield [Request("default", (ask, assistant(plan), then)) for ask, plan in zip(asks, plans, strict=True)]
    good, bad = (parse_elicited(plan, answer) for plan, answer in zip(plans, answers, strict=True))
    if good is None or bad is None:
        return Dropped("unparseable")
    return check_pair(Pair(good[1], bad[1], "default", "default", good[0], bad[0]))


def _model_contrast(chosen_role: str, rejected_role: str) -> Callable[[Instruction, StrategyContext], StrategyRun]:
    def run(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
        ask = (user(instruction.text),)
        chosen, rejected = yield [Request(chosen_role, ask), Request(rejected_role, ask)]
        return check_pair(Pair(chosen, rejected, chosen_role, rejected_role))

    return run


def _refine(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    ask = user(instruction.text)
    (draft,) = yield [Request("default", (ask,))]
    if not clean_answer(draft):
        return Dropped("empty")
    again = user(ctx.templates.render("refine.jinja", instruction=instruction.text))
    (refined,) = yield [Request("default", (ask, assistant(draft), again))]
    return check_pair(Pair(refined, draft, "default", "default"))


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "prefix",
            "prompt",
            ("default",),
            "M(p+ ⊕ q)",
            "M(p− ⊕ q)",
            _prefix,
            "The same model answers after a positive vs a negative principle prefix (as in RLCD).",
        ),
        Strategy(
            "demon",
            "prompt",
            ("default",),
            "M(d+ ⊕ q)",
            "M(d− ⊕ q)",
            _demon,
            "The same model answers after good vs bad few-shot demonstrations.",
        ),
        Strategy(
            "elicitive",
            "prompt",
            ("default",),
            "answer of M(T+(q))",
            "answer of M(T−(q))",
            _elicitive,
            "The model first reasons how to write a good vs a bad answer, then writes it in a second turn; "
            "the reasoning is kept in `chosen_reasoning` / `rejected_reasoning`.",
            requests=4,
        ),
        Strategy(
            "nparam",
            "model",
            ("large", "small"),
            "M_large(q)",
            "M_small(q)",
            _model_contrast("large", "small"),
            "A larger model's answer is chosen over a smaller model's.",
        ),
        Strategy(
            "leaderboard",
            "model",
            ("first", "second"),
            "M_first(q)",
            "M_second(q)",
            _model_contrast("first", "second"),
            "A higher-ranked model's answer is chosen over a lower-ranked model's.",
        ),
        Strategy(
            "refine",
            "pipeline",
            ("default",),
            "M(q ⊕ r− ⊕ refine)",
            "r− = M(q)",
            _refine,
            "The model's first answer is rejected and its own refinement of it is chosen.",
        ),
    )
}


def parse_strategies(value: str) -> list[str]:
    """`all` or a comma-separated list of strategy names, in canonical order, without repeats."""
    names = list(STRATEGIES) if value.strip() == "all" else [n.strip() for n in value.split(",") if n.strip()]
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        bad = unknown[0] if unknown else value
        raise ConfigError(f"unknown strategy {bad!r} (known: {', '.join(STRATEGIES)}, all)")
    return [name for name in STRATEGIES if name in names]


def roles_used(names: list[str]) -> list[str]:
    """The model roles the named strategies generate with, in `ROLES` order."""
    wanted = {role for name in names for role in STRATEGIES[name].roles}
    return [role for role in ROLES if role in wanted]
