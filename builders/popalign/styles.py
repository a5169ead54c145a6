"""How the contrasts ask for their sides: the styles of elicitive, prefix and refine, whether strategies share one
draw of the plain answer, best-of-n and temperature settings, and how a thinking model's trace is stored; one
settings group (`Styles`), declared as every user setting is (`popalign.declarations`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from popalign.declarations import FLAG, TEMPERATURE, Check, check_fields, key_of, one_of, setting
from popalign.errors import ConfigError

ELICITIVE_STYLES = ("guided", "paper")
#: How `prefix` contrasts its sides: a principle sentence in the user turn, or a label of the response (RLCD's
#: and PopAlign's mechanism) from the helpfulness or the harmlessness set.
PREFIX_STYLES = ("sentences", "helpful", "harmless")
#: How `refine` gets its chosen side: the model refines its own answer, or a reviser revises it minimally (CLAIR).
REFINE_STYLES = ("self", "clair")
#: The tags of a think block unless `--think-tags` gives others, and how a build stores a thinking model's trace
#: (`popalign.reasoning`): in the `*_thinking` columns alone, or also before the answer it trains on.
THINK_TAGS = ("<think>", "</think>")
THINKING_MODES = ("separate", "inline")


def _tags(value: Any) -> tuple[str, str]:
    """Two tags from `OPEN,CLOSE` or a list of two, each non-empty, not alike."""
    tags = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
    if len(tags) != 2 or not all(isinstance(tag, str) and tag.strip() for tag in tags) or tags[0] == tags[1]:
        raise ValueError
    return (tags[0].strip(), tags[1].strip())


@dataclass(frozen=True)
class Styles:
    """How the contrasts ask for their sides (`popalign.strategies`): the elicitive, prefix and refine styles, and
    whether the strategies share one draw of the plain answer. Recorded in the manifest and the recipe by their
    flat keys."""

    elicitive: str = setting(
        "guided",
        key="elicitive_style",
        check=one_of(ELICITIVE_STYLES),
        help="guided: plan, then an answer guided by the plan in a fresh context (works on small models); "
        "paper: the paper's single-turn Thought:/Response: template, for capable models",
    )
    prefix: str = setting(
        "sentences",
        key="prefix_style",
        check=one_of(PREFIX_STYLES),
        help="sentences: a positive or negative principle sentence before the instruction; helpful, harmless: "
        "RLCD's and the paper's mechanism, a short label of the response on the assistant's side (a prefill on a "
        "local model, a system message on an endpoint) from the helpfulness or the harmlessness set",
    )
    refine: str = setting(
        "self",
        key="refine_style",
        check=one_of(REFINE_STYLES),
        help="self: the model refines its own first answer (the paper); clair: the reviser role revises it "
        "minimally, keeping all it does not correct (CLAIR), so the pair stays contrastive and short",
    )
    shared_answers: bool = setting(
        False,
        key="share_answers",
        check=FLAG,
        help="let the model and pipeline strategies share one draw of the plain answer M(q) (fewer requests; the "
        "same text may then be chosen in nparam or leaderboard and rejected in refine)",
    )
    best_of: int = setting(
        4,
        check=Check(int, "a whole number from 2 to 64", lambda value: 2 <= value <= 64, metavar="N"),
        help="bestofn: answers sampled per instruction, of which the best- and the worst-rated make the pair",
    )
    low_temperature: float = setting(
        0.3, check=TEMPERATURE, help="temperature: the temperature of the chosen side (below the rejected side's)"
    )
    high_temperature: float = setting(1.2, check=TEMPERATURE, help="temperature: the temperature of the rejected side")
    thinking: str = setting(
        "separate",
        check=one_of(THINKING_MODES),
        help="a thinking model's reasoning trace: separate: only the answer is chosen/rejected, the trace goes to "
        "chosen_thinking/rejected_thinking; inline: the trace also stays before the answer it trains on, written "
        "as thinking models' chat templates write it (<think>\\n…\\n</think>\\n\\nanswer)",
    )
    think_tags: tuple[str, str] = setting(
        THINK_TAGS,
        check=Check(tuple, "two different tags OPEN,CLOSE such as <think>,</think>", convert=_tags),
        metavar="OPEN,CLOSE",
        help="the tags of the think block a model writes before its answer (read out of the answer text of servers "
        "and local models that leave it there)",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.low_temperature >= self.high_temperature:
            raise ConfigError(
                f"low_temperature {self.low_temperature} must be below high_temperature {self.high_temperature}"
            )

    def recorded(self) -> dict[str, Any]:
        """The styles by their flat keys, as the manifest and the recipe hold them.

        >>> Styles(prefix="harmless").recorded()
        {'elicitive_style': 'guided', 'prefix_style': 'harmless', 'refine_style': 'self', 'share_answers': False, \
'best_of': 4, 'low_temperature': 0.3, 'high_temperature': 1.2, 'thinking': 'separate', \
'think_tags': ['<think>', '</think>']}
        """
        return {
            key_of(item): list(value) if isinstance(value := getattr(self, item.name), tuple) else value
            for item in fields(self)
        }

    @classmethod
    def from_recorded(cls, values: Mapping[str, Any]) -> Styles:
        """The styles a manifest (or a recipe) records; one it does not record takes its default."""
        known = {key_of(item): item.name for item in fields(cls)}
        return cls(**{known[key]: value for key, value in values.items() if key in known})


#: The settings groups a build holds, by the `BuildConfig` field that holds each.
