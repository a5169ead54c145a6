"""Pairwise judging of a build's pairs, for the PopAlign paper's per-strategy accuracy: how often an independent
judge agrees that the chosen answer is the better one.

An LLM judge sees the instruction and the two answers twice, once in each order (`judge_pairwise.jinja`); a
verdict counts only when both orders agree, otherwise it is a `tie`; an answer with no final `A` or `B` is
`unparsed`. A reward-model judge (`popalign.backends.reward_model`) scores each side; its verdict is the sign of
the margin. A pairwise ranker (PairRM, `popalign.backends.pair_ranker`) reads the instruction with both answers,
in each order, and like the LLM judge its verdict counts only when both orders agree.
Accuracy = chosen wins / judged, with a Wilson 95% interval, beside the paper's figure for the same kind of judge:
GPT-4's for an LLM judge, PairRM's for a pairwise ranker or a reward model (`contrasts.paper_judge`), as each
strategy declares it (`Strategy.paper_accuracy`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popalign.backends import check_installed, open_backends, reward_model
from popalign.backends.base import THINKS_FIRST
from popalign.cache import GenerationCache
from popalign.config import Endpoints, JudgeOptions
from popalign.contrasts import STRATEGIES, Dropped, paper_judge
from popalign.conversations import from_chat, transcript
from popalign.dataset.quality import JUDGE_CHART, QUALITY_DIR, load_pyplot
from popalign.dataset.records import JudgeRecord, JudgeSummary
from popalign.dataset.rows import StrategyOutcome
from popalign.engine import Engine
from popalign.errors import PopAlignError
from popalign.generation import Generation, GenerationParams, Request, user
from popalign.intervals import wilson
from popalign.model_identity import ModelIdentity
from popalign.roles import ModelSpec, Spec, parse_spec
from popalign.shapes import VERDICT
from popalign.templates import TemplateSet

if TYPE_CHECKING:
    from popalign.backends.base import Backend
    from popalign.backends.local import LocalBackend
    from popalign.backends.pair_ranker import PairRanker
    from popalign.backends.reward_model import RewardModel

VERDICTS = ("chosen", "rejected", "tie", "unparsed")
#: What a judge's reply ends with: the letter of the better answer.
CHOICES = ("A", "B")
#: `--min-judge` policies: `agree` keeps only the pairs whose verdict is `chosen`.
JUDGE_TEMPLATE = "judge_pairwise.jinja"
Chat = list[dict[str, str]]
#: The paper's Table (pairwise accuracy per strategy), beside which the card shows a build's own.
_FINAL_CHOICE = re.compile(r"(?<![A-Za-z])(A|B)(?![A-Za-z])[^A-Za-z]*$")

JudgeRun = Generator[list[Request], list[Generation], tuple[str | None, str | None]]


def parse_choice(text: str) -> str | None:
    """The answer a judge picked: `A` or `B` as the last word of its reply (`[[A]]`, `**B**`, `Answer: A.`)."""
    match = _FINAL_CHOICE.search(text.strip())
    return match.group(1) if match else None


def judge_chats(row: dict[str, Any], templates: TemplateSet) -> list[Chat]:
    """The judge's two chats for a row: the chosen answer shown as A, then as B; a conversation is shown whole, as
    a transcript (`prompt_text`)."""
    instruction = prompt_text(row)
    chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
    return [
        [{"role": "user", "content": templates.render(JUDGE_TEMPLATE, instruction=instruction, answer_a=a, answer_b=b)}]
        for a, b in ((chosen, rejected), (rejected, chosen))
    ]


def prompt_text(row: dict[str, Any]) -> str:
    """What a judge reads as a row's instruction: its text, or a conversation as a transcript of its turns."""
    return transcript(from_chat(row["prompt"]))


def judge_run(row: dict[str, Any], templates: TemplateSet) -> JudgeRun:
    """Ask the `judge` role about one row in both orders; return the choice (`A`, `B` or None) of each."""
    asks = [Request("judge", (user(chat[0]["content"]),), shape=VERDICT) for chat in judge_chats(row, templates)]
    first, second = yield asks
    return parse_choice(first.text), parse_choice(second.text)


def likelier_letter(found: dict[str, float] | None) -> str | None:
    """The likelier of `A` and `B` by their log-probs as a judge's whole answer; a letter with none (outside an
    endpoint's top log-probs) is the less likely; None when neither has one, or both alike.

    >>> likelier_letter({"A": -3.1, "B": -2.0}), likelier_letter({"A": -0.4}), likelier_letter({})
    ('B', 'A', None)
    """
    a, b = ((found or {}).get(letter, -math.inf) for letter in CHOICES)
    return "A" if a > b else "B" if b > a else None


def read_choices(
    backend: Backend, spec: Spec, model: ModelIdentity, chats: list[Chat], cache: GenerationCache | None
) -> list[str | None]:
    """For judge replies that named no choice: the letter the model finds likelier as its whole answer, from the
    backend's log-probs (`choice_logprobs`: teacher-forced for a local model, the first token's top log-probs for
    an endpoint), cached by backend, model and chat. None where neither letter has a log-prob, or where the
    server gave none (it is told in a warning)."""
    keys = [_choice_key(backend.name, model.key, chat) for chat in chats]
    found = {key: json.loads(text) for key, text in (cache.get_many(keys) if cache else {}).items()}
    missing = [i for i, key in enumerate(keys) if key not in found]
    asked = backend.choice_logprobs(spec, [chats[i] for i in missing], CHOICES) if missing else []
    read = {keys[i]: values for i, values in zip(missing, asked, strict=True) if values is not None}
    if cache:
        cache.put_many({key: json.dumps(values) for key, values in read.items()})
    if none := sum(values is None for values in asked):
        print(f"popalign: warning: judge {model.name} gave no log-probs for {none} of {len(chats)} replies that name "
              "no letter; they stay unparsed", file=sys.stderr)  # fmt: skip
    if thinks := sum(THINKS_FIRST in (values or {}) for values in (found | read).values()):
        print(f"popalign: warning: judge {model.name} thinks before it answers (its first token opens a reasoning "
              f"trace), so no letter can be read from it: {thinks} of {len(chats)} replies that name no letter stay "
              "unparsed; give the judge room to finish thinking (--judge-max-new-tokens)", file=sys.stderr)  # fmt: skip
    return [likelier_letter((found | read).get(key)) for key in keys]


def _choice_key(backend: str, model: str, chat: Chat) -> str:
    payload = {"kind": "choice-logprobs", "backend": backend, "model": model, "chat": chat, "choices": CHOICES}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def verdict(chosen_first: str | None, rejected_first: str | None) -> str:
    """The verdict of two judgements of one pair: with the chosen answer shown as A, then as B."""
    if chosen_first is None or rejected_first is None:
        return "unparsed"
    if (chosen_first, rejected_first) == ("A", "B"):
        return "chosen"
    if (chosen_first, rejected_first) == ("B", "A"):
        return "rejected"
    return "tie"  # the judge followed the position, not the answer


def margin_verdict(margin: float) -> str:
    """A reward model's verdict from its chosen-minus-rejected margin."""
    return "chosen" if margin > 0 else "rejected" if margin < 0 else "tie"


def summarize(rows: Iterable[dict[str, Any]]) -> JudgeSummary:
    """Accuracy and its companions over just-judged rows (and, where scored, their `score`); a row with no
    `judge_verdict` is one whose judging request failed, counted as `failed`."""
    counts = Counter(row.get("judge_verdict") or "failed" for row in rows)
    rows = [row for row in rows if row.get("judge_verdict")]
    judged = counts["chosen"] + counts["rejected"] + counts["tie"]
    decided = [row for row in rows if row["judge_verdict"] in ("chosen", "rejected")]
    longer = [
        (len(row["chosen"][0]["content"]) > len(row["rejected"][0]["content"])) == (row["judge_verdict"] == "chosen")
        for row in decided
    ]
    scored = [row for row in decided if row.get("score") is not None]
    agree = [(row["score"] > 0) == (row["judge_verdict"] == "chosen") for row in scored]
    return JudgeSummary(
        counts={name: counts[name] for name in (*VERDICTS, "failed")},
        accuracy=round(counts["chosen"] / judged, 4) if judged else None,
        interval=wilson(counts["chosen"], judged),
        longer_wins=round(sum(longer) / len(longer), 4) if longer else None,
        dlma_agreement=round(sum(agree) / len(agree), 4) if agree else None,
    )


def write_accuracy_chart(summaries: dict[str, JudgeSummary], judge: str, kind: str, out: Path) -> str:
    """Save a bar chart of accuracy per strategy with its 95% interval, beside the paper's figure for the same kind
    of judge (`paper_judge`), as `quality/judge_accuracy.png` under `out`; return its relative path."""
    pyplot = load_pyplot()
    names = [name for name, summary in summaries.items() if summary.accuracy is not None]
    accuracy = [summaries[name].accuracy or 0.0 for name in names]
    errors = [
        [value - summaries[name].interval[0] for name, value in zip(names, accuracy, strict=True)],
        [summaries[name].interval[1] - value for name, value in zip(names, accuracy, strict=True)],
    ]
    relative = JUDGE_CHART
    (out / QUALITY_DIR).mkdir(parents=True, exist_ok=True)
    figure, axes = pyplot.subplots(figsize=(6, 3.2), dpi=100)
    positions = range(len(names))
    axes.bar([x - 0.2 for x in positions], accuracy, width=0.4, yerr=errors, capsize=3, color="#4a7ebb", label=judge)
    figures = STRATEGIES.paper_accuracy(paper_judge(kind))
    paper = [figures.get(name, 0.0) for name in names]
    axes.bar([x + 0.2 for x in positions], paper, width=0.4, color="#bbbbbb", label=f"paper ({paper_judge(kind)})")
    axes.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    axes.set_xticks(list(positions), names)
    axes.set_ylim(0, 1)
    axes.set_ylabel("chosen judged better")
    axes.set_title("Pairwise accuracy per strategy (95% interval)")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(out / relative, format="png", metadata={"Software": None})
    pyplot.close(figure)
    return relative


@dataclass(frozen=True)
class JudgeSettings:
    """Who judges the pairs: an LLM (an engine with a `judge` role, prompted by `templates`) or a model judge (a
    reward model or a pairwise ranker); `min_judge="agree"` keeps only the pairs the judge agrees with."""

    engine: Engine | None = None
    reward_model: RewardModel | PairRanker | None = None
    templates: TemplateSet = field(default_factory=TemplateSet)
    min_judge: str | None = None


def judge_settings(
    options: JudgeOptions,
    templates: TemplateSet,
    cache: GenerationCache | None,
    endpoints: Endpoints,
    local: LocalBackend | None,
    batch_size: int,
    progress: bool,
) -> JudgeSettings:
    """The judge `options` ask for: a reward model, or an engine with a `judge` role (sharing `local`, a build's
    local backend, when there is one)."""
    if options.reward_model:
        model = reward_model(ModelSpec.parse(options.reward_model), batch_size)
        return JudgeSettings(reward_model=model, templates=templates, min_judge=options.min_judge)
    spec = parse_spec(options.model or "")
    check_installed([spec])
    backends = {"local": local} if local else {}
    backends |= open_backends([spec] if spec.kind not in backends else [], batch_size=batch_size, endpoints=endpoints)
    params = GenerationParams(max_new_tokens=options.max_new_tokens, temperature=0.0, top_p=1.0, seed=0)
    engine = Engine({"judge": spec}, params, backends=backends, cache=cache, progress=progress)
    return JudgeSettings(engine=engine, templates=templates, min_judge=options.min_judge)


def judge_outcomes(outcomes: dict[str, StrategyOutcome], judging: JudgeSettings, out: Path) -> JudgeRecord:
    """Judge all rows in one pass, summarize each strategy (before `--min-judge` curation), curate, and draw the
    accuracy chart into `out`; return the manifest's `judge` record."""
    judge = judge_rows([row for outcome in outcomes.values() for row in outcome.rows], judging)
    summaries = {name: summarize(outcome.rows) for name, outcome in outcomes.items() if outcome.rows}
    chart = write_accuracy_chart(summaries, judge["model"], judge["kind"], out)
    record = JudgeRecord(**judge, min_judge=judging.min_judge, configs=summaries, chart=chart)
    if judging.min_judge == "agree":
        for outcome in outcomes.values():
            for row in outcome.rows:
                if row["judge_verdict"] != "chosen":
                    outcome.dropped["judge-failed" if row["judge_verdict"] is None else "judge-disagrees"] += 1
            outcome.rows = [row for row in outcome.rows if row["judge_verdict"] == "chosen"]
    return record


def judge_rows(rows: list[dict[str, Any]], judging: JudgeSettings) -> dict[str, Any]:
    """Set `judge_verdict` (chosen, rejected, tie, unparsed; None where judging failed) and `judge_margin` on each
    row (`prompt`, `chosen`, `rejected`, `strategy`) in one pass of the judge; return what the judge was."""
    if judging.reward_model and judging.reward_model.kind == "pairwise":
        return _ranked_verdicts(rows, judging.reward_model)
    if judging.reward_model:
        scores = judging.reward_model.scores([chat for row in rows for chat in pair_chats(row)])
        for index, row in enumerate(rows):
            margin = scores[2 * index] - scores[2 * index + 1]
            row["judge_verdict"], row["judge_margin"] = margin_verdict(margin), margin
        identity = judging.reward_model.spec.identify().recorded()
        return {"model": judging.reward_model.name, "kind": "reward-model", "identity": identity}
    assert judging.engine is not None
    return _llm_verdicts(rows, judging.engine, judging.templates)


def _ranked_verdicts(rows: list[dict[str, Any]], ranker: PairRanker) -> dict[str, Any]:
    """Set each row's verdict from a pairwise ranker's logits in both orders (chosen as A, then as B): each order's
    choice is the sign of its logit, and the verdict counts only when both agree; `judge_margin` is the logit with
    the chosen answer first minus the logit with it second."""
    triples = [
        (prompt_text(row), *order)
        for row in rows
        for order in ((row["chosen"][0]["content"], row["rejected"][0]["content"]),
                      (row["rejected"][0]["content"], row["chosen"][0]["content"]))
    ]  # fmt: skip
    logits = ranker.logits(triples)
    for index, row in enumerate(rows):
        first, second = logits[2 * index], logits[2 * index + 1]
        row["judge_verdict"] = verdict(_letter(first), _letter(second))
        row["judge_margin"] = first - second
    identity = ranker.spec.identify().recorded()
    return {"model": ranker.name, "kind": "pairwise", "judgements": len(triples), "identity": identity}


def _letter(logit: float) -> str | None:
    """The answer a ranker's logit picks: `A` when positive, `B` when negative, none when zero."""
    return "A" if logit > 0 else "B" if logit < 0 else None


def _llm_verdicts(rows: list[dict[str, Any]], engine: Engine, templates: TemplateSet) -> dict[str, Any]:
    """Set each row's `judge_verdict` from the engine's `judge` role (None where a request failed for good). A
    reply that names no choice is read from the judge's log-probabilities of `A` and `B` instead: teacher-forced
    for a local judge, the first token's top log-probs for an endpoint."""
    runs = [(row["strategy"], judge_run(row, templates)) for row in rows]
    answers = engine.run(runs, expected=2 * len(rows))  # each a pair of choices, or Dropped
    if rows and all(isinstance(answer, Dropped) for answer in answers):
        judge = engine.published_name("judge")
        refused = "; ".join(engine.stats.failure_lines()[:3])
        raise PopAlignError(f"judge {judge}: every request failed ({refused})")
    choices = {(i, order): pair[order] for i, pair in enumerate(answers) if isinstance(pair, tuple) for order in (0, 1)}
    spec, unread = engine.roles["judge"], [key for key, choice in choices.items() if choice is None]
    chats = [judge_chats(rows[i], templates)[order] for i, order in unread]
    read = read_choices(engine.backend("judge"), spec, engine.identities["judge"], chats, engine.cache)
    choices.update(zip(unread, read, strict=True))
    for i, row in enumerate(rows):
        row["judge_verdict"] = verdict(choices[i, 0], choices[i, 1]) if (i, 0) in choices else None
        row["judge_margin"] = None
    return {
        "model": engine.published_name("judge"),
        "identity": engine.identities["judge"].recorded(),
        "kind": "llm",
        "template_sha256": templates.hashes()[JUDGE_TEMPLATE],
        "from_logprobs": sum(choice is not None for choice in read),
        "judgements": len(choices),
    } | ({"shapes": shapes} if (shapes := engine.stats.shapes()) else {})  # replies in the verdict shape, or not


def pair_chats(row: dict[str, Any]) -> tuple[Chat, Chat]:
    """The two chats a reward model scores for a row: the prompt followed by each answer."""
    return row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]
