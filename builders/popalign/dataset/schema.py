"""The row schema shared by every config: TRL's explicit-prompt conversational preference format + provenance.

`margin` is the DLMA `score` again, under the name TRL's `RewardTrainer` reads as a pair's margin, and 0 (no
margin: the plain pairwise loss) on an unscored row, since that trainer cannot read a null one."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Features


@functools.cache
def features() -> Features:
    """The `datasets` features of a row (imported on first use: an endpoint build starts without `datasets`)."""
    from datasets import Features, List, Value

    messages = List({"role": Value("string"), "content": Value("string")})
    return Features(
        {
            "prompt": messages,
            "chosen": messages,
            "rejected": messages,
            "strategy": Value("string"),
            "prompt_id": Value("string"),
            "chosen_model": Value("string"),
            "rejected_model": Value("string"),
            "chosen_reasoning": Value("string"),
            "rejected_reasoning": Value("string"),
            "chosen_thinking": Value("string"),
            "rejected_thinking": Value("string"),
            "score": Value("float64"),
            "score_per_token": Value("float64"),
            "margin": Value("float64"),
            "swapped": Value("bool"),
            "judge_verdict": Value("string"),
            "judge_margin": Value("float64"),
        }
    )


def make_row(
    *,
    strategy: str,
    prompt: list[dict[str, str]],
    prompt_id: str,
    chosen: str,
    rejected: str,
    chosen_model: str,
    rejected_model: str,
    chosen_reasoning: str | None = None,
    rejected_reasoning: str | None = None,
    chosen_thinking: str | None = None,
    rejected_thinking: str | None = None,
) -> dict[str, Any]:
    """One row. `prompt` is the plain conversation (one user turn for a plain instruction; a system turn and earlier
    turns where it has them): how each side was elicited is never trained on. The
    `*_reasoning` columns hold what guided a side (elicitive's plans), the `*_thinking` columns the reasoning trace
    a thinking model wrote before the answer (`popalign.reasoning`)."""
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "strategy": strategy,
        "prompt_id": prompt_id,
        "chosen_model": chosen_model,
        "rejected_model": rejected_model,
        "chosen_reasoning": chosen_reasoning,
        "rejected_reasoning": rejected_reasoning,
        "chosen_thinking": chosen_thinking,
        "rejected_thinking": rejected_thinking,
        "score": None,
        "score_per_token": None,
        "margin": 0.0,
        "swapped": False,
        "judge_verdict": None,
        "judge_margin": None,
    }
