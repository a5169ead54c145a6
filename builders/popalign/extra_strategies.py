"""Three contrasts beyond the paper's six, registered through the `popalign.strategies` entry points exactly as a
plugin's are: the best against the worst of N samples as a ranker rates them (RS-DPO), a low- against a
high-temperature sample (the single-pattern baseline PopAlign argues against, for ablations), and a teacher's
answer against the policy's own (DistiLLM-2)."""

from __future__ import annotations

import re

from popalign.contrasts import Dropped, Strategy, StrategyContext, StrategyRun
from popalign.generation import Generation, Request
from popalign.prompts import Instruction
from popalign.shapes import RATING
from popalign.strategies import check_pair, clean_answer, model_contrast

#: The first draw of the N samples of best-of-N and the draw of the temperature pair: apart from the draws of the
#: paper's strategies (`popalign.strategies.PLAIN_DRAW`), so no text is chosen in one config and rejected in another.
BEST_OF_DRAW, TEMPERATURE_DRAW = 100, 4
RATE_TEMPLATE = "bestofn_rate.jinja"
#: A rating is asked greedily and short: the number, perhaps after a word or two.
RATE_PARAMS = (("temperature", 0.0), ("max_new_tokens", 16))
_RATING = re.compile(r"(?<![\d.])(10|[1-9])(?![\d.])")
_SCALE = re.compile(r"\(?\b1\s*(?:to|-|–)\s*10\b\)?", re.IGNORECASE)


def rating(text: str) -> int | None:
    """The 1-to-10 rating a ranker's reply gives: its first whole number in that range, once an echo of the scale
    ("(1 to 10)") is left out and not counting a list's "1." or a decimal; None when there is none.

    >>> rating("Rating: 8/10"), rating("Rating (1 to 10): 3"), rating("**7**"), rating("1. It is clear"), rating("12")
    (8, 3, 7, None, None)
    """
    match = _RATING.search(_SCALE.sub(" ", text))
    return int(match[1]) if match else None


def _best_of_n(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    asks = [Request("default", instruction.messages, sample=BEST_OF_DRAW + i) for i in range(ctx.styles.best_of)]
    samples = yield asks
    usable = [sample for sample in samples if not ctx.unusable(sample) and clean_answer(sample.text)]
    if len(usable) < 2:
        unusable = [dropped for sample in samples if (dropped := ctx.unusable(sample))]
        return unusable[0] if unusable else Dropped("empty")
    rate = [
        Request(
            "ranker",
            instruction.asking(
                ctx.templates.render(RATE_TEMPLATE, instruction=instruction.text, answer=clean_answer(s.text))
            ),
            params=RATE_PARAMS,
            shape=RATING,
        )
        for s in usable
    ]
    replies = yield rate
    rated: list[tuple[int, int, Generation]] = [
        (score, index, sample)
        for index, (sample, reply) in enumerate(zip(usable, replies, strict=True))
        if (score := rating(reply.text)) is not None
    ]
    if len(rated) < 2:
        return Dropped("unrated")
    best = max(rated, key=lambda item: (item[0], -item[1]))  # the earliest sample among equals
    worst = min(rated, key=lambda item: (item[0], item[1]))
    if best[0] == worst[0]:
        return Dropped("tied")
    return check_pair(best[2], worst[2], ("default", "default"), ctx)


def _temperature(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    temperatures = (ctx.styles.low_temperature, ctx.styles.high_temperature)
    chosen, rejected = yield [
        Request("default", instruction.messages, sample=TEMPERATURE_DRAW, params=(("temperature", t),))
        for t in temperatures
    ]
    return check_pair(chosen, rejected, ("default", "default"), ctx)


BEST_OF_N = Strategy(
    "bestofn",
    "sampling",
    ("default",),
    "best of M(q)×N",
    "worst of M(q)×N",
    _best_of_n,
    "The model answers N times (--best-of, at the run's temperature); the `ranker` model (the default model unless "
    "given) rates each answer from 1 to 10, and the best-rated answer is chosen over the worst-rated (RS-DPO).",
    requests=lambda ctx: 2 * ctx.styles.best_of,
    helper_roles=("ranker",),
    drop_reasons={
        "unrated": "bestofn: fewer than two answers got a rating from 1 to 10",
        "tied": "bestofn: every rated answer got the same rating",
    },
    templates={RATE_TEMPLATE: "bestofn: the ranker rates one answer from 1 to 10 (vars: instruction, answer)"},
)

TEMPERATURE = Strategy(
    "temperature",
    "sampling",
    ("default",),
    "M(q) at a low temperature",
    "M(q) at a high temperature",
    _temperature,
    "The same model answers at a low (chosen) and a high (rejected) temperature (--low-temperature, "
    "--high-temperature): the single-pattern baseline PopAlign argues against, for ablations.",
)

TEACHER = Strategy(
    "teacher",
    "model",
    ("teacher", "default"),
    "M_teacher(q)",
    "M_policy(q)",
    model_contrast("teacher", "teacher", "default"),
    "A stronger `teacher` model's answer is chosen over the policy's own (the `default` model), as in DistiLLM-2.",
)
