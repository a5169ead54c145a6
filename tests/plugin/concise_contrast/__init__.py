"""A popalign plugin strategy: the same model answers concisely (chosen) and padded (rejected); a pair whose
concise side is the longer one is dropped as `not-shorter`."""

from __future__ import annotations

from pathlib import Path

from popalign.contrasts import Dropped, Strategy, StrategyContext, StrategyRun
from popalign.generation import Request
from popalign.prompts import Instruction
from popalign.strategies import check_pair, clean_answer, first_step_prompts


def run(instruction: Instruction, ctx: StrategyContext) -> StrategyRun:
    """The last user turn asked for short and padded, the conversation's earlier turns kept."""
    text = instruction.text
    asks = [
        Request("default", instruction.asking(ctx.templates.render(f"concise_{side}.jinja", instruction=text)))
        for side in ("short", "padded")
    ]
    short, padded = yield asks
    if len(clean_answer(short.text)) >= len(clean_answer(padded.text)):
        return Dropped("not-shorter")
    return check_pair(short, padded, ("default", "default"), ctx)


CONCISE = Strategy(
    "concise",
    "prompt",
    ("default",),
    "M(short ⊕ q)",
    "M(padded ⊕ q)",
    run,
    "The same model answers concisely vs padded with filler (a plugin).",
    drop_reasons={"not-shorter": "concise: the concise answer is not the shorter one"},
    templates={
        "concise_short.jinja": "concise: ask for a short answer (vars: instruction)",
        "concise_padded.jinja": "concise: ask for a padded answer (vars: instruction)",
    },
    template_dir=Path(__file__).parent / "templates",
    scoring=first_step_prompts(run),  # DLMA scores a row under the two prompts its sides were written from
    paper_accuracy={"GPT-4": 0.7},  # a figure of this plugin's own (the paper has none for it)
    styled_sides={("thinking", "inline"): ("M(short ⊕ q), its thinking kept", "M(padded ⊕ q), its thinking kept")},
)
