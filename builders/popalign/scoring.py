"""Self-rewarding pair scores (DLMA, arXiv 2402.11907) from teacher-forced log-probabilities.

For a pair (y+, y−) and a contrastive prompt pair (x+, x−) around the same instruction:

    score = [log p(y+|x+) − log p(y+|x−)] − [log p(y−|x+) − log p(y−|x−)]

Each prompt's own log-probability appears once with each sign, so it cancels: with LP(s) the log-probability
of a whole sequence, score = LP(x+ ⊕ y+) − LP(x− ⊕ y+) − LP(x+ ⊕ y−) + LP(x− ⊕ y−). Both scorers compute
LP: the local backend in batches, and a served model (TGI, vLLM or SGLang) from its prompt log-probs
(`popalign.backends.endpoint_scorer`).
A positive score says the contrast agrees with the pair's label.

The per-token score divides each side's conditional term by its answer's length in tokens, so pairs of long and
short answers rank alike: [log p(y+|x+) − log p(y+|x−)]/|y+| − [log p(y−|x+) − log p(y−|x−)]/|y−|, with
log p(y|x) = LP(x ⊕ y) − LP(x). It is what curricula rank on.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from popalign.backends import check_installed, local_backend
from popalign.backends.endpoint_scorer import EndpointScorer
from popalign.cache import GenerationCache
from popalign.config import ORDERS, SCORE_CONTRASTS, SWAP_POLICIES, Endpoints, ScoreOptions
from popalign.contrasts import STRATEGIES, StrategyContext
from popalign.dataset.quality import quality_report, write_histogram
from popalign.dataset.records import QualityRecord, ScoreRecord
from popalign.dataset.rows import StrategyOutcome
from popalign.errors import ConfigError
from popalign.extras import require
from popalign.generation import chat_prompt
from popalign.prompts import Instruction
from popalign.roles import ModelSpec, parse_spec

if TYPE_CHECKING:  # torch loads only where a local model is used
    from popalign.backends.local import LocalBackend

_SWAPPED_VERDICT = {"chosen": "rejected", "rejected": "chosen"}


class Scorer(Protocol):
    """Computes LP, the teacher-forced log-probability of whole texts."""

    name: str

    def logprobs(self, texts: list[str]) -> Iterator[tuple[list[int], list[float]]]:
        """Yield `(indices into texts, their LP)` as each batch finishes."""
        ...


class LocalScorer:
    """LP from the local backend's batched forward pass."""

    def __init__(self, backend: LocalBackend, spec: ModelSpec) -> None:
        self.backend, self.spec = backend, spec
        self.name = f"local:{spec.identify().key}"  # its LP are cached by what it computes with

    def logprobs(self, texts: list[str]) -> Iterator[tuple[list[int], list[float]]]:
        yield from self.backend.sequence_logprobs(self.spec, texts)


#: The local batch size of scoring: four sequences' log-probs per pair, so fewer pairs per batch than generation.
SCORE_BATCH_SIZE = 8


@dataclass(frozen=True)
class ScoreStats:
    """How many sequence log-probabilities a scoring pass needed, found cached, and computed."""

    pairs: int
    sequences: int
    cached: int
    computed: int


def contrast_chats(row: dict[str, Any], context: StrategyContext, fallback: str) -> tuple[list, list]:
    """The (x+, x−) chats of a row: the scoring prompts its strategy declares (`Strategy.scoring`), else
    `fallback`'s (the score contrast, `prefix` or `demon`), both in the conversation's context."""
    instruction = Instruction.from_chat(row["prompt"])
    scoring = STRATEGIES[row["strategy"]].scoring or STRATEGIES[fallback].scoring
    assert scoring is not None  # the score contrasts declare theirs
    return scoring(instruction, context, row)


def score_rows(
    rows: Sequence[dict[str, Any]],
    *,
    scorer: Scorer,
    render: Any,
    context: StrategyContext,
    contrast: str = "prefix",
    cache: GenerationCache | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[list[float], list[float | None], ScoreStats]:
    """The DLMA score of each row, and its per-token score when `count_tokens` (an answer's length in tokens)
    is given. `render(chat)` turns a chat into the prompt text the model sees (its chat template with the
    generation prompt); every LP is cached under the scorer's name and the text."""
    if contrast not in SCORE_CONTRASTS:
        raise ConfigError(f"unknown score contrast {contrast!r} (known: {', '.join(SCORE_CONTRASTS)})")
    quads, prompts = [], []
    for row in rows:
        positive, negative = contrast_chats(row, context, contrast)
        x_pos, x_neg = render(positive), render(negative)
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        quads.append((x_pos + chosen, x_neg + chosen, x_pos + rejected, x_neg + rejected))
        prompts.append((x_pos, x_neg))
    needed = [*(text for quad in quads for text in quad), *(x for pair in prompts for x in pair if count_tokens)]
    texts = sorted(set(needed))
    keys = {text: _logprob_key(scorer.name, text) for text in texts}
    found = cache.get_many(keys.values()) if cache else {}
    values = {text: float(found[keys[text]]) for text in texts if keys[text] in found}
    missing = [text for text in texts if text not in values]
    for indices, logprobs in scorer.logprobs(missing) if missing else ():
        batch = {missing[i]: value for i, value in zip(indices, logprobs, strict=True)}
        values.update(batch)
        if cache:
            cache.put_many({keys[text]: repr(value) for text, value in batch.items()})
    scores = [values[a] - values[b] - values[c] + values[d] for a, b, c, d in quads]
    per_token: list[float | None] = [None] * len(rows)
    if count_tokens:
        for i, (row, (a, b, c, d), (x_pos, x_neg)) in enumerate(zip(rows, quads, prompts, strict=True)):
            shift = values[x_pos] - values[x_neg]  # LP(x+) - LP(x-), so only the conditional terms are left
            lengths = [max(1, count_tokens(row[side][0]["content"])) for side in ("chosen", "rejected")]
            per_token[i] = (values[a] - values[b] - shift) / lengths[0] - (values[c] - values[d] - shift) / lengths[1]
    return scores, per_token, ScoreStats(len(rows), len(texts), len(texts) - len(missing), len(missing))


def curate(
    rows: list[dict[str, Any]], *, min_score: float | None, swap: str
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Apply the swap policy to pairs whose score favours the rejected side (`keep`, `drop`, or `swap` and
    mark `swapped`), then drop pairs under `min_score`. Returns the kept rows and the counts of each action."""
    if swap not in SWAP_POLICIES:
        raise ConfigError(f"unknown swap policy {swap!r} (known: {', '.join(SWAP_POLICIES)})")
    kept, counts = [], Counter()
    for row in rows:
        if row["score"] < 0 and swap == "drop":
            counts["rejected-better"] += 1
            continue
        if row["score"] < 0 and swap == "swap":
            row = _swapped(row)
            counts["swapped"] += 1
        if min_score is not None and row["score"] < min_score:
            counts["low-score"] += 1
            continue
        kept.append(row)
    return kept, counts


def order_rows(rows: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    """`generated` keeps the build order; `curriculum` puts the easiest pairs of a config (largest per-token score)
    first."""
    if order not in ORDERS:
        raise ConfigError(f"unknown order {order!r} (known: {', '.join(ORDERS)})")
    if order == "generated":
        return rows
    return sorted(rows, key=lambda row: -row["score_per_token"])


def _swapped(row: dict[str, Any]) -> dict[str, Any]:
    return row | {
        "chosen": row["rejected"],
        "rejected": row["chosen"],
        "chosen_model": row["rejected_model"],
        "rejected_model": row["chosen_model"],
        "chosen_reasoning": row["rejected_reasoning"],
        "rejected_reasoning": row["chosen_reasoning"],
        "chosen_thinking": row.get("rejected_thinking"),
        "rejected_thinking": row.get("chosen_thinking"),
        "score": -row["score"],
        "margin": -row["score"],
        "score_per_token": None if row.get("score_per_token") is None else -row["score_per_token"],
        "swapped": True,
        # a judge's verdict names a side, so it follows the answers
        "judge_verdict": _SWAPPED_VERDICT.get(row.get("judge_verdict"), row.get("judge_verdict")),
        "judge_margin": None if row.get("judge_margin") is None else -row["judge_margin"],
    }


def _logprob_key(scorer: str, text: str) -> str:
    payload = json.dumps({"kind": "sequence-logprob", "scorer": scorer, "text": text}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ScoreSettings:
    """How to score pairs (see `popalign.scoring`), then curate and order them."""

    scorer: Scorer
    render: Callable[[list[dict[str, str]]], str]
    count_tokens: Callable[[str], int]
    contrast: str = "prefix"
    min_score: float | None = None
    swap: str = "keep"
    order: str = "generated"

    def describe(self) -> ScoreRecord:
        """The settings as the manifest and the card record them."""
        return ScoreRecord(
            scorer=self.scorer.name, contrast=self.contrast, min_score=self.min_score, swap=self.swap, order=self.order
        )


def score_settings(
    options: ScoreOptions,
    backend: LocalBackend | None,
    default_model: str,
    endpoints: Endpoints,
    batch_size: int = SCORE_BATCH_SIZE,
) -> ScoreSettings:
    """The scorer, prompt renderer and curation that `options` ask for: a served model (TGI, vLLM or SGLang, asked
    as `endpoints` say), or a local model on `backend` (a build's own local backend, when it has one)."""
    spec = parse_spec(options.model or default_model)
    if not spec.served and options.protocol != "auto":
        raise ConfigError(f"score_protocol: {options.protocol} is for a served scoring model; {spec} is local")
    check_installed([spec])
    require("local", "scoring (the chat template is rendered by transformers)")
    backend = backend or local_backend(batch_size)
    if spec.served:
        tokenizer = backend.tokenizer(ModelSpec.parse(options.tokenizer).location)
        scorer: Scorer = EndpointScorer(
            options.model or default_model, tokenizer=tokenizer, endpoints=endpoints, protocol=options.protocol
        )
    else:
        scorer, tokenizer = LocalScorer(backend, spec), backend.tokenizer(spec.location)

    def render(chat: list[dict[str, str]]) -> str:
        return chat_prompt(tokenizer, chat)

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return ScoreSettings(
        scorer=scorer, render=render, count_tokens=count_tokens, contrast=options.contrast,
        min_score=options.min_score, swap=options.swap, order=options.order,
    )  # fmt: skip


def score_outcomes(
    outcomes: dict[str, StrategyOutcome],
    scoring: ScoreSettings,
    context: StrategyContext,
    cache: GenerationCache | None,
    out: Path,
) -> tuple[dict[str, QualityRecord], ScoreStats]:
    """Score all rows in one pass (batched across strategies), report on them, then curate and order them."""
    rows = [row for outcome in outcomes.values() for row in outcome.rows]
    scores, per_token, stats = score_rows(
        rows,
        scorer=scoring.scorer,
        render=scoring.render,
        context=context,
        contrast=scoring.contrast,
        cache=cache,
        count_tokens=scoring.count_tokens,
    )
    for row, score, normalised in zip(rows, scores, per_token, strict=True):
        row["score"], row["score_per_token"], row["margin"] = score, normalised, score
    quality = {}
    for name, outcome in outcomes.items():
        report = quality_report(outcome.rows, outcome.dropped)
        histogram = write_histogram([row["score"] for row in outcome.rows], name, out) if outcome.rows else None
        kept, actions = curate(outcome.rows, min_score=scoring.min_score, swap=scoring.swap)
        quality[name] = replace(report, histogram=histogram, curation=dict(actions))
        outcome.dropped.update({reason: n for reason, n in actions.items() if reason != "swapped"})
        outcome.rows = order_rows(kept, scoring.order)
    return quality, stats
