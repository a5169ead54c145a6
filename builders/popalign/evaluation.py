"""`popalign evaluate`: does a build's data improve a model? The paper's main result is a trained model's win rate
against its base, so each trained model and the reference answer the instructions of the build's held-out `test`
split (greedily), a judge compares each pair in both orders (the judges of `popalign judge`), and the win rate
(wins, and half of the ties, over the judged) comes with a Wilson 95% interval, overall and per strategy whose
test rows hold the instruction.

What it writes into its `out` folder: `evaluation.json` (the table), `answers.jsonl` (every answer and verdict)
and `win_rate.png` (the chart)."""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from popalign.contrasts import Dropped
from popalign.conversations import Message, as_chat, from_chat
from popalign.dataset.folder import Manifest, write_json
from popalign.dataset.quality import load_pyplot
from popalign.dataset.rows import iter_rows
from popalign.engine import Engine
from popalign.errors import PopAlignError
from popalign.generation import Generation, Request
from popalign.intervals import wilson
from popalign.judging import JudgeSettings, judge_rows

#: The role of the model the trained ones are compared with.
REFERENCE = "reference"
#: The overall line of the table, beside the strategies'.
OVERALL = "overall"
CHART = "win_rate.png"


@dataclass(frozen=True)
class HeldOut:
    """One held-out instruction: its conversation (one user turn for a plain instruction), id, and the strategies
    whose test rows hold it."""

    messages: tuple[Message, ...]
    prompt_id: str
    strategies: tuple[str, ...]

    def chat(self) -> list[dict[str, str]]:
        return as_chat(self.messages)


@dataclass(frozen=True)
class WinRate:
    """One model's verdicts against the reference over some instructions: wins, losses, ties, unparsed replies and
    failed requests; the win rate over the judged (wins + ties / 2) and its Wilson 95% interval."""

    wins: int
    losses: int
    ties: int
    unparsed: int
    failed: int
    rate: float | None
    interval: tuple[float, float]

    @classmethod
    def of(cls, verdicts: Iterable[str | None]) -> WinRate:
        """From the verdicts of trained-as-chosen rows (`chosen`: the trained answer is better).

        >>> WinRate.of(["chosen", "chosen", "rejected", "tie"]).rate
        0.625
        """
        verdicts = list(verdicts)
        wins, losses, ties = (verdicts.count(v) for v in ("chosen", "rejected", "tie"))
        judged = wins + losses + ties
        points = wins + ties / 2
        return cls(
            wins,
            losses,
            ties,
            verdicts.count("unparsed"),
            verdicts.count(None),
            round(points / judged, 4) if judged else None,
            tuple(round(bound, 4) for bound in wilson(points, judged)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Evaluation:
    """The table of one evaluation: by trained model (its name), by strategy (and `overall`), its `WinRate`; the
    models as outputs name them, the judge, the reference and the build it read, and where its files are."""

    build: str
    reference: str
    judge: dict[str, Any]
    instructions: int
    table: dict[str, dict[str, WinRate]]
    models: dict[str, str]
    out: Path
    #: By model and the reference: what identified it (`ModelIdentity.recorded`), so two reports tell apart
    #: models trained into one folder.
    identities: dict[str, dict[str, str]] = field(default_factory=dict)
    regenerated: int = 0  # answers generated again because a model changed since they were cached

    def to_dict(self) -> dict[str, Any]:
        return {
            "build": self.build,
            "reference": self.reference,
            "models": self.models,
            "identities": self.identities,
            "regenerated": self.regenerated,
            "judge": self.judge,
            "instructions": self.instructions,
            "table": {model: {name: asdict(rate) for name, rate in rows.items()} for model, rows in self.table.items()},
            "chart": CHART,
        }


def held_out_instructions(build: Path, manifest: Manifest) -> list[HeldOut]:
    """The build's held-out instructions, each once (by `prompt_id`), with the strategies whose `test` split holds
    it, in the order the configs list them.

    Raises:
        PopAlignError: the build has no `test` split.
    """
    found: dict[str, tuple[str, list[str]]] = {}
    for name in manifest.configs:
        for row in iter_rows(build, name, splits=("test",)):
            found.setdefault(row["prompt_id"], (from_chat(row["prompt"]), []))[1].append(name)
    if not found:
        raise PopAlignError(
            f"{build}: no test split to evaluate on; build it with --test-size F (a share of the instructions held out)"
        )
    return [HeldOut(messages, prompt_id, tuple(names)) for prompt_id, (messages, names) in found.items()]


#: A run of the engine that asks every model and the reference for their answer, and returns them by role.
AnswersRun = Generator[list[Request], list[Generation], dict[str, str]]


def _answers(instruction: HeldOut, models: list[str]) -> AnswersRun:
    answers = yield [Request(role, instruction.messages) for role in (*models, REFERENCE)]
    return {role: answer.text.strip() for role, answer in zip((*models, REFERENCE), answers, strict=True)}


def evaluate_models(build: Path, manifest: Manifest, engine: Engine, judging: JudgeSettings, out: Path) -> Evaluation:
    """Answer the build's test instructions with every role of `engine` (the trained models and `reference`),
    judge each trained answer against the reference's, and write the table, the answers and the chart to `out`."""
    instructions = held_out_instructions(build, manifest)
    models = [role for role in engine.roles if role != REFERENCE]
    results = engine.run(((OVERALL, _answers(i, models)) for i in instructions), len(instructions) * len(engine.roles))
    rows = []
    for instruction, result in zip(instructions, results, strict=True):
        for model in models:
            answered = not isinstance(result, Dropped) and result[model] and result[REFERENCE]
            rows.append(
                {
                    "model": model,
                    "prompt_id": instruction.prompt_id,
                    "strategies": instruction.strategies,
                    "prompt": instruction.chat(),
                    "chosen": [{"role": "assistant", "content": result[model] if answered else ""}],
                    "rejected": [{"role": "assistant", "content": result[REFERENCE] if answered else ""}],
                    "strategy": OVERALL,
                    "answered": bool(answered),
                }
            )
    answered = [row for row in rows if row["answered"]]
    if not answered:
        refused = "; ".join(engine.stats.failure_lines()[:3]) or "no request was refused"
        raise PopAlignError(f"no test instruction got an answer from every model ({refused})")
    judge = judge_rows(answered, judging)
    names = list(dict.fromkeys(name for i in instructions for name in i.strategies))
    table = {
        model: {
            name: WinRate.of(
                row.get("judge_verdict") for row in rows if row["model"] == model and (name == OVERALL or
                                                                                    name in row["strategies"])
            )
            for name in (OVERALL, *names)
        }
        for model in models
    }  # fmt: skip
    evaluation = Evaluation(
        str(build),
        engine.published_name(REFERENCE),
        judge,
        len(instructions),
        table,
        {model: engine.published_name(model) for model in models},
        out,
        {role: engine.identities[role].recorded() for role in (*models, REFERENCE)},
        engine.stats.regenerated,
    )
    _write(evaluation, rows, engine, out)
    return evaluation


def _write(evaluation: Evaluation, rows: list[dict[str, Any]], engine: Engine, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "answers.jsonl").open("w", encoding="utf-8") as sink:
        for row in rows:
            record = {
                "model": row["model"],
                "prompt_id": row["prompt_id"],
                "instruction": row["prompt"][-1]["content"],
                **({"context": row["prompt"][:-1]} if len(row["prompt"]) > 1 else {}),
                "strategies": list(row["strategies"]),
                "answer": row["chosen"][0]["content"],
                "reference_answer": row["rejected"][0]["content"],
                "verdict": {"chosen": "win", "rejected": "loss"}.get(row.get("judge_verdict") or "", row.get(
                    "judge_verdict")),
            }  # fmt: skip
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    write_json(out / "evaluation.json", evaluation.to_dict())
    write_chart(evaluation, out / CHART)


def write_chart(evaluation: Evaluation, path: Path) -> None:
    """Win rate per strategy (and overall) with its 95% interval, one bar per trained model, against 0.5."""
    pyplot = load_pyplot()
    models = list(evaluation.table)
    names = list(next(iter(evaluation.table.values())))
    figure, axes = pyplot.subplots(figsize=(max(6, 1.1 * len(names)), 3.2), dpi=100)
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        rates = [evaluation.table[model][name] for name in names]
        values = [rate.rate or 0.0 for rate in rates]
        errors = [[v - r.interval[0] for v, r in zip(values, rates, strict=True)],
                  [r.interval[1] - v for v, r in zip(values, rates, strict=True)]]  # fmt: skip
        positions = [x - 0.4 + width * (k + 0.5) for x in range(len(names))]
        axes.bar(positions, values, width=width, yerr=errors, capsize=3, label=model)
    axes.axhline(0.5, color="black", linewidth=0.8, linestyle=":")
    axes.set_xticks(list(range(len(names))), names)
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"win rate against {evaluation.reference}")
    axes.set_title("Win rate on the held-out test split (95% interval)")
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    pyplot.close(figure)
