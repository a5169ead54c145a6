"""The six PopAlign contrast strategies, the context every strategy reads, and the helpers a strategy (a plugin's
too) builds its requests and pairs with.

Each strategy is a generator: it yields the requests of one step, receives their generations, and finally
returns a `Pair` or a `Dropped` (with a reason its `Strategy` declares). The engine drives each run on its own;
identical requests of several runs are generated once. They are registered, like any plugin, under the
`popalign.strategies` entry points (`popalign.contrasts`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from rapidfuzz.distance import Indel

from popalign.contrasts import (
    PAPER,
    SELECTIONS,
    STRATEGIES,
    Dropped,
    Pair,
    Scoring,
    Strategy,
    StrategyContext,
    StrategyRun,
    interruptible,
)
from popalign.conversations import Message, as_chat, with_system
from popalign.errors import ConfigError, PopAlignError, StrategyError, first_line
from popalign.generation import Generation, Request, assistant, user
from popalign.prompts import Instruction
from popalign.shapes import THOUGHT

#: A revision's own opening line that announces it ("Here's a rewritten version with the requested improvements:"),
#: not part of the answer: taken off a refine revision, and counted.
_PREAMBLE = re.compile(
    r"^[\s*#>]*(?:(?:sure|certainly|of course|okay|ok|absolutely)[,!.]?\s+)?"
    r"(?:here(?:'s|’s| is| are)|below is|the following is)\b[^\n]{0,200}?:[\s*]*\n",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*\**\s*(?:improved response|response|answer)\s*\**\s*:\s*\**\s*", re.IGNORECASE)
_NEXT_EXAMPLE = re.compile(r"\n\s*Request\s*:", re.IGNORECASE)
_THOUGHT = re.compile(r"^\W*thought\W*(?P<thought>.*?)[\s*]*response\s*\**\s*:[\s*]*(?P<response>.*)$", re.I | re.S)
REPEAT_RATIO = 0.9
PLAN_ANSWER_RATIO = 0.5


def clean_answer(text: str) -> str:
    """Strip a leading `Response:` label and anything after the model starts a new `Request:` example."""
    text = _NEXT_EXAMPLE.split(text, maxsplit=1)[0]
    return _LABEL.sub("", text, count=1).strip()


def without_preamble(text: str) -> tuple[str, bool]:
    """A revision without an opening line that only announces it, and whether there was one.

    >>> without_preamble("Here's a rewritten version with the requested improvements:\\n\\nTides follow the moon.")
    ('Tides follow the moon.', True)
    >>> without_preamble("Here is why: the moon pulls the sea.")
    ('Here is why: the moon pulls the sea.', False)
    """
    match = _PREAMBLE.match(text)
    rest = text[match.end() :].strip() if match else ""
    return (rest, True) if rest else (text, False)


def similarity(first: str, second: str) -> float:
    """How alike two texts are, word by word: 2 × their longest common subsequence of case-folded words over the
    words of both (0 to 1; rapidfuzz's Indel similarity, 0.1 ms where difflib took 158 ms on 2,000 characters)."""
    return Indel.normalized_similarity(first.casefold().split(), second.casefold().split())


def check_pair(
    chosen: Generation,
    rejected: Generation,
    roles: tuple[str, str],
    ctx: StrategyContext,
    reasoning: tuple[str, str] | tuple[None, None] = (None, None),
    sources: tuple[Generation, ...] = (),
) -> Pair | Dropped:
    """The pair of two answers, or why it is dropped: a cut side or a cut generation the sides were written
    from (`sources`: the elicitive plans), a side that ended while still thinking, an empty side, or two sides that
    are the same text (`identical`). The sides' reasoning traces, where the model gave any, go with them."""
    if dropped := ctx.unusable(chosen, rejected, *sources):
        return dropped
    good, bad = clean_answer(chosen.text), clean_answer(rejected.text)
    if not good or not bad:
        return Dropped("empty")
    if " ".join(good.split()).casefold() == " ".join(bad.split()).casefold():
        return Dropped("identical")
    truncated = any(g.truncated for g in (chosen, rejected, *sources))
    traces = {"chosen_thinking": chosen.reasoning or None, "rejected_thinking": rejected.reasoning or None}
    return Pair(good, bad, *roles, *reasoning, truncated=truncated, **traces)


def is_near_copy(reasoning: str, answer: str) -> bool:
    """An elicitive answer that only repeats its reasoning (character similarity at least `REPEAT_RATIO`)."""
    return Indel.normalized_similarity(reasoning.strip(), answer) >= REPEAT_RATIO


def parse_thought(text: str) -> tuple[str, str] | None:
    """The (thought, response) of an output in the paper's `Thought: … Response: …` format, or None."""
    match = _THOUGHT.match(text.strip())
    if not match or not match["thought"].strip() or not match["response"].strip():
        return None
    return match["thought"].strip(), match["response"].strip()


def guided_messages(ctx: StrategyContext, instruction: Instruction, plan: str) -> tuple[Message, ...]:
    """The request an elicitive answer is written from: the plan as guidance in a fresh context (a system
    message, before the conversation's own), then the plain conversation; never the model's own earlier turn."""
    return with_system(instruction.messages, ctx.templates.render("elicitive_answer.jinja", plan=plan))


def demonstration_turns(demos: list[dict[str, str]], instruction: Instruction) -> tuple[Message, ...]:
    """Few-shot demonstrations as earlier user/assistant turns of the chat, before the conversation (after its
    system turn, which stays first)."""
    turns = [turn for demo in demos for turn in (user(demo["instruction"]), assistant(demo["response"]))]
    messages = instruction.messages
    head = messages[:1] if messages[0][0] == "system" else ()
    return (*head, *turns, *messages[len(head) :])


def prefix_messages(ctx: StrategyContext, instruction: Instruction) -> tuple[tuple[Message, ...], ...]:
    """The chats of `prefix`'s two sides: a principle sentence before the last user turn (`sentences`), or a label
    of the response on the assistant's side, as its prefilled opening or as a system message; earlier turns kept."""
    if ctx.styles.prefix == "sentences":
        principle = ctx.principles[ctx.pick(instruction, len(ctx.principles))]
        return tuple(
            instruction.asking(
                ctx.templates.render("prefix.jinja", principle=principle[side], instruction=instruction.text)
            )
            for side in ("positive", "negative")
        )
    labels = ctx.labels[ctx.pick(instruction, len(ctx.labels))]
    if ctx.prefill:
        return tuple(
            (*instruction.messages, assistant(ctx.templates.render("prefix_label_prefill.jinja", label=labels[side])))
            for side in ("positive", "negative")
        )
    return tuple(
        with_system(instruction.messages, ctx.templates.render("prefix_label_system.jinja", label=labels[side]))
        for side in ("positive", "negative")
    )


def _prefix(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    good, bad = prefix_messages(ctx, instruction)
    chosen, rejected = yield [Request("default", good), Request("default", bad)]
    return check_pair(chosen, rejected, ("default", "default"), ctx)


def _demon(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    good, bad = (demonstration_turns(demos, instruction) for demos in (ctx.good_demos, ctx.bad_demos))
    chosen, rejected = yield [Request("default", good), Request("default", bad)]
    return check_pair(chosen, rejected, ("default", "default"), ctx)


def _elicitive(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    if ctx.styles.elicitive == "paper":
        return (yield from _elicitive_paper(instruction, ctx))
    text = instruction.text
    asks = [
        Request("planner", instruction.asking(ctx.templates.render(f"elicitive_{side}.jinja", instruction=text)))
        for side in ("good", "bad")
    ]
    *plans, plain = yield [*asks, Request("planner", instruction.messages)]
    if dropped := ctx.unusable(*plans):
        return dropped
    good_plan, bad_plan = (plan.text.strip() for plan in plans)
    if not good_plan or not bad_plan:
        return Dropped("empty")
    if any(similarity(plan, plain.text) >= PLAN_ANSWER_RATIO for plan in (good_plan, bad_plan)):
        return Dropped("plan-is-answer")
    chosen, rejected = yield [
        Request("default", guided_messages(ctx, instruction, plan)) for plan in (good_plan, bad_plan)
    ]
    if is_near_copy(good_plan, clean_answer(chosen.text)) or is_near_copy(bad_plan, clean_answer(rejected.text)):
        return Dropped("near-copy")
    return check_pair(chosen, rejected, ("default", "default"), ctx, (good_plan, bad_plan), tuple(plans))


def _elicitive_paper(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    chosen, rejected = yield [
        Request(
            "default",
            instruction.asking(ctx.templates.render(f"elicitive_paper_{side}.jinja", instruction=instruction.text)),
            shape=THOUGHT,
        )
        for side in ("good", "bad")
    ]
    if dropped := ctx.unusable(chosen, rejected):
        return dropped
    good, bad = parse_thought(chosen.text), parse_thought(rejected.text)
    if good is None or bad is None:
        return Dropped("unparsed")
    if is_near_copy(*good) or is_near_copy(*bad):
        return Dropped("near-copy")
    sides = (replace(chosen, text=good[1]), replace(rejected, text=bad[1]))
    return check_pair(*sides, ("default", "default"), ctx, (good[0], bad[0]))


#: Which draw of the plain answer M(q) each strategy asks for: refine's first answer is draw 0 (as is elicitive's
#: plan check, never a side), nparam's and leaderboard's their own, teacher's the next, so one text is not chosen in
#: one config and rejected in another; with `share_answers` every strategy takes draw 0 (one request where the
#: models agree).
PLAIN_DRAW = {"refine": 0, "nparam": 1, "leaderboard": 2, "teacher": 3}


def plain_request(ctx: StrategyContext, draw: int, role: str, instruction: Instruction) -> Request:
    """The request for a strategy's plain answer M(q) by `role`: its own `draw` unless the run shares answers."""
    return Request(role, instruction.messages, sample=0 if ctx.styles.shared_answers else draw)


def model_contrast(
    strategy: str, chosen_role: str, rejected_role: str
) -> Callable[[Instruction, StrategyContext], StrategyRun]:
    """The run of a model contrast: each role's plain answer M(q), in the strategy's own draw (`PLAIN_DRAW`)."""

    def run(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
        asks = [plain_request(ctx, PLAIN_DRAW[strategy], role, instruction) for role in (chosen_role, rejected_role)]
        chosen, rejected = yield asks
        return check_pair(chosen, rejected, (chosen_role, rejected_role), ctx)

    return run


def _refine(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    (draft,) = yield [plain_request(ctx, PLAIN_DRAW["refine"], "default", instruction)]
    if dropped := ctx.unusable(draft):
        return dropped
    if not clean_answer(draft.text):
        return Dropped("empty")
    if ctx.styles.refine == "clair":  # a minimal revision of the final answer, by the reviser, in a fresh chat
        revise = ctx.templates.render("refine_clair.jinja", instruction=instruction.text, answer=draft.text)
        (revised,) = yield [Request("reviser", instruction.asking(revise))]
        return _revision_pair(revised, draft, ("reviser", "default"), ctx)
    again = user(ctx.templates.render("refine.jinja", instruction=instruction.text))
    (refined,) = yield [Request("default", (*instruction.messages, assistant(draft.text), again))]
    return _revision_pair(refined, draft, ("default", "default"), ctx)


def _revision_pair(
    revision: Generation, draft: Generation, roles: tuple[str, str], ctx: StrategyContext
) -> Pair | Dropped:
    """Refine's pair: the revision, without an opening line that only announces it, over the draft."""
    text, removed = without_preamble(revision.text)
    pair = check_pair(replace(revision, text=text), draft, roles, ctx)
    return replace(pair, preamble_removed=removed) if isinstance(pair, Pair) else pair


def first_step_prompts(run: Callable[[Instruction, StrategyContext], StrategyRun]) -> Scoring:
    """The scoring prompts of a prompt contrast: the chats of the first two requests its run makes, the contexts its
    answers were generated in (DLMA's x+ and x-)."""

    def prompts(instruction: Instruction, ctx: StrategyContext, row: Mapping[str, Any]) -> tuple[list, list]:
        steps = run(instruction, ctx)
        positive, negative = next(steps)[:2]
        steps.close()
        return positive.chat(), negative.chat()

    return prompts


def _elicitive_scoring(instruction: Instruction, ctx: StrategyContext, row: Mapping[str, Any]) -> tuple[list, list]:
    """Guided elicitive's sides were written with their plans as guidance: each side's plan over the conversation;
    the paper's template: its two requests."""
    if ctx.styles.elicitive != "guided":
        return first_step_prompts(_elicitive)(instruction, ctx, row)
    positive, negative = (
        as_chat(guided_messages(ctx, instruction, plan))
        for plan in (row["chosen_reasoning"], row["rejected_reasoning"])
    )
    return positive, negative


#: The paper's six, each registered under its name in popalign's `popalign.strategies` entry points; the paper's
#: accuracy of each is its Table 3 (GPT-4 and PairRM as judges).
PREFIX = Strategy(
    "prefix",
    "prompt",
    ("default",),
    "M(p+ ⊕ q)",
    "M(p− ⊕ q)",
    _prefix,
    "The same model answers after a positive vs a negative principle prefix, or (prefix styles helpful and "
    "harmless) with its response labelled positively vs negatively, as in RLCD.",
    scoring=first_step_prompts(_prefix),
    paper_accuracy={"GPT-4": 0.755, "PairRM": 0.565},
    styled_sides={
        ("prefix_style", "helpful"): ("M(q), response labelled helpful", "M(q), response labelled unhelpful"),
        ("prefix_style", "harmless"): ("M(q), response labelled harmless", "M(q), response labelled harmful"),
    },
)

DEMON = Strategy(
    "demon",
    "prompt",
    ("default",),
    "M(d+ ⊕ q)",
    "M(d− ⊕ q)",
    _demon,
    "The same model answers after good vs bad few-shot demonstrations.",
    scoring=first_step_prompts(_demon),
    paper_accuracy={"GPT-4": 0.765, "PairRM": 0.655},
)

ELICITIVE = Strategy(
    "elicitive",
    "prompt",
    ("default",),
    "answer of M(T+(q))",
    "answer of M(T−(q))",
    _elicitive,
    "The model (or a `planner` model) first writes a plan for a good vs a bad answer; each answer is then "
    "written with its plan as guidance in a fresh context. The plans are kept in `chosen_reasoning` / "
    "`rejected_reasoning`, never in the answers.",
    requests=5,
    helper_roles=("planner",),
    drop_reasons={
        "near-copy": "elicitive: an answer only repeats its plan",
        "plan-is-answer": "elicitive: a plan is itself an answer (close to the planner's plain answer to the "
        "instruction)",
        "unparsed": "elicitive, paper template: the output has no `Thought:` / `Response:` parts",
    },
    scoring=_elicitive_scoring,
    paper_accuracy={"GPT-4": 0.915, "PairRM": 0.855},
)

NPARAM = Strategy(
    "nparam",
    "model",
    ("large", "small"),
    "M_large(q)",
    "M_small(q)",
    model_contrast("nparam", "large", "small"),
    "A larger model's answer is chosen over a smaller model's.",
    paper_accuracy={"GPT-4": 0.88, "PairRM": 0.73},
)

LEADERBOARD = Strategy(
    "leaderboard",
    "model",
    ("first", "second"),
    "M_first(q)",
    "M_second(q)",
    model_contrast("leaderboard", "first", "second"),
    "A higher-ranked model's answer is chosen over a lower-ranked model's.",
    paper_accuracy={"GPT-4": 0.84, "PairRM": 0.655},
)

REFINE = Strategy(
    "refine",
    "pipeline",
    ("default",),
    "M(q ⊕ r− ⊕ refine)",
    "r− = M(q)",
    _refine,
    "The model's first answer is rejected and its own refinement of it is chosen (or, with --refine-style "
    "clair, the reviser's minimal revision of it).",
    helper_roles=("reviser",),
    paper_accuracy={"GPT-4": 0.555, "PairRM": 0.505},
    styled_sides={("refine_style", "clair"): ("M_reviser(revise ⊕ q ⊕ r−)", "r− = M(q)")},
)


def parse_strategies(value: str) -> list[str]:
    """`all` (every registered strategy), `paper` (the paper's six) or a comma-separated list of strategy names
    and these, in canonical order, without repeats."""
    names: list[str] = []
    for name in (n.strip() for n in value.split(",") if n.strip()):
        names += list(STRATEGIES) if name == "all" else list(PAPER) if name == "paper" else [name]
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown or not names:
        bad = unknown[0] if unknown else value
        raise ConfigError(f"unknown strategy {bad!r} (known: {', '.join([*STRATEGIES, *SELECTIONS])})")
    return [name for name in STRATEGIES if name in names]


def roles_used(names: list[str]) -> list[str]:
    """The model roles the named strategies generate with, in the registry's order of roles."""
    wanted = {role for name in names for role in (*STRATEGIES[name].roles, *STRATEGIES[name].helper_roles)}
    return [role for role in STRATEGIES.roles() if role in wanted]


def begun(strategy: Strategy, instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    """A strategy's run for one instruction, driven as the engine drives any run, with its code contained: each
    step of it runs where Ctrl-C stops it at once (`interruptible`), and every failure of it (a raise or an exit,
    its first call included; a step that is not a non-empty list of `Request`s; more requests than it declares per
    instruction; a result that is not a `Pair` of texts or a `Dropped`) is a `StrategyError` naming it and the
    package that registers it. popalign's own errors (a template's, an endpoint's) pass as they are."""
    where = f"strategy {strategy.name!r} (from {STRATEGIES.package(strategy.name)})"
    declared = strategy.planned(ctx)
    run: StrategyRun | None = None
    answers: list[Generation] | None = None
    asked = 0
    try:
        while True:
            try:
                with interruptible():
                    if run is None:
                        run = strategy.run(instruction, ctx)
                    requests = run.send(answers)  # type: ignore[arg-type]  # send(None) starts it
            except StopIteration as stop:
                return _checked_result(where, stop.value)
            except PopAlignError:
                raise
            except (Exception, SystemExit) as err:  # the strategy's own code failed: named, in one line
                raise StrategyError(f"{where}: its run failed ({type(err).__name__}: {first_line(err)})") from err
            asked += _checked_step(where, requests, asked, declared)
            answers = yield requests
    finally:
        if run is not None and hasattr(run, "close"):
            run.close()


def _checked_step(where: str, requests: object, asked: int, declared: int) -> int:
    """How many requests one step of a run yields: a non-empty list of `Request`s, no more in all than its
    strategy declares per instruction (a run that asks without end is stopped there)."""
    if not isinstance(requests, list) or not requests:
        raise StrategyError(f"{where}: yielded {first_line(repr(requests))[:80]}, not a list of Requests")
    for request in requests:
        if not isinstance(request, Request):
            raise StrategyError(f"{where}: yielded {first_line(repr(request))[:80]}, not a Request")
    if asked + len(requests) > declared:
        raise StrategyError(
            f"{where}: asked for {asked + len(requests)} requests for one instruction; it declares at most {declared}"
        )
    return len(requests)


def _checked_result(where: str, result: object) -> Pair | Dropped:
    """What a run returned: a `Pair` of two texts, or a `Dropped`."""
    if isinstance(result, Dropped) or (
        isinstance(result, Pair) and isinstance(result.chosen, str) and isinstance(result.rejected, str)
    ):
        return result
    raise StrategyError(f"{where}: returned {first_line(repr(result))[:80]}, not a Pair of texts or a Dropped")
