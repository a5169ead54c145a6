"""What each command prints when it is done, from its typed result: a build's table of rows, drops, requests and
costs, a dry run's estimate, the judge's accuracy and the scores' agreement, evaluate's win rates, a merge, a push
and the published versions. Each report is a function of the result alone and returns the text; `popalign.cli`
prints it.

>>> money(0.0000320), money(12.5)
('$0.0000320', '$12.50')
"""

from __future__ import annotations

import math
from typing import Any

from popalign.contrasts import STRATEGIES, paper_judge
from popalign.dataset.folder import Manifest
from popalign.estimate import Estimate
from popalign.evaluation import Evaluation
from popalign.pipeline import BuildSummary
from popalign.publish import PushResult


def build_report(summary: BuildSummary, manifest: Manifest, *, keep_truncated: bool) -> str:
    """A finished build: per strategy its rows, cut share, drops and requests; the costs; how shaped answers were
    read; each strategy's models; the scores and the judge where the build had them; and the totals."""
    assert summary.stats is not None
    stats = summary.stats
    requests = "requests: made cached shared retried failed"
    lines = ["", f"{'strategy':<12} {'rows':>5}  {'cut':>7}  {'dropped':<34} {requests}"]
    for name, outcome in summary.outcomes.items():
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(outcome.dropped.items())) or "0"
        c = stats.by_strategy[name]
        counts = f"{c.generated:>14} {c.cached:>6} {c.shared:>6} {c.retried:>7} {c.failed:>6}"
        lines.append(f"{name:<12} {outcome.count:>5}  {outcome.truncation()['rate']:>7.0%}  {dropped:<34} {counts}")
    lines += costs_table(manifest) + reading_lines(manifest) + [""]
    for name in summary.outcomes:
        strategy = STRATEGIES[name]
        lines.append(f"  {name:<12} {summary.roles[strategy.chosen_role]} → {summary.roles[strategy.rejected_role]}")
    if summary.score_stats:
        lines.append(quality_report(summary))
    if summary.judge:
        lines.append(judge_report(summary))
    total = sum(outcome.count for outcome in summary.outcomes.values())
    configs = sum(1 for outcome in summary.outcomes.values() if outcome.count)
    thinking = f", {stats.reasoning_tokens} of them thinking" if stats.reasoning_tokens else ""
    lines += [
        "",
        f"wrote {summary.out} ({configs} configs, {total} rows) in {summary.seconds:.0f} s; "
        f"{stats.requested} requests (as the progress bar counts them), {stats.distinct} distinct: "
        f"{stats.cached} cached, {stats.generated} generated "
        f"({stats.prompt_tokens} tokens in, {stats.tokens} out{thinking}), "
        f"{stats.retried} retries; {summary.duplicates} duplicate instructions skipped",
    ]
    if stats.regenerated:
        lines.append(f"{stats.regenerated} answers generated again: their model changed since they were cached")
    if stats.failures:
        lines += ["refused for good (their pairs dropped as failed):", *(f"  {line}" for line in stats.failure_lines())]
    kept = "kept (--keep-truncated)" if keep_truncated else "dropped as truncated"
    lines.append(f"cut: share of pairs with a side stopped at the token limit ({kept})")
    written = [name for name, outcome in summary.outcomes.items() if outcome.count]
    example = "elicitive" if "elicitive" in written else written[0]
    lines.append(f'load with: datasets.load_dataset("{summary.out}")  # every strategy; or one config: "{example}"')
    return "\n".join(lines)


def reading_lines(manifest: Manifest) -> list[str]:
    """How the answers popalign reads were read: those asked in a shape that came in it, and revisions whose
    announcing opening line was taken off."""
    lines = []
    for name, config in manifest.configs.items():
        if shapes := config.shapes:
            lines.append(f"{name}: {shapes['in_shape']} of {shapes['asked']} answers asked in a shape came in it "
                         f"({shapes['free_text']} read as free text)")  # fmt: skip
        if removed := config.preambles_removed:
            lines.append(f"{name}: {removed} revisions began with a line announcing them, taken off")
    return lines


def costs_table(manifest: Manifest) -> list[str]:
    """What each strategy's kept pairs cost: every request they used, answered now or from the cache."""
    priced = manifest.prices is not None
    thinking = any(config.reasoning_tokens for config in manifest.configs.values())
    head = f"{'strategy':<12} {'requests':>8} {'tokens in':>10} {'tokens out':>10} {'per kept pair':>13}"
    head += f" {'of out, thinking':>16}" if thinking else ""
    head += f" {'cost':>10} {'per kept pair':>13}" if priced else ""
    lines = ["", head]
    for name, config in manifest.configs.items():
        per_pair = config.tokens_per_pair
        line = f"{name:<12} {config.requests or 0:>8,} {config.prompt_tokens or 0:>10,} "
        line += f"{config.tokens or 0:>10,} {f'{per_pair:,.0f}' if per_pair is not None else '–':>13}"
        if thinking:
            line += f" {config.reasoning_tokens or 0:>16,}"
        if priced:
            line += f" {money(config.cost):>10} {money(config.cost_per_pair):>13}"
        lines.append(line)
    return lines


def estimate_report(guess: Estimate) -> str:
    """A dry run: what the whole build would ask, use, keep and cost, from the sample it built."""
    lines = ["", f"estimate for all {guess.total} instructions, from a build of {guess.sampled} evenly spaced "
             "through them:"]  # fmt: skip
    priced = any(s.cost is not None for s in guess.strategies.values())
    head = f"{'strategy':<12} {'requests':>9} {'tokens in':>11} {'tokens out':>11} {'kept pairs':>10} {'per pair':>9}"
    lines.append(head + (f" {'cost':>10}" if priced else ""))
    for name, s in guess.strategies.items():
        per_pair = f"{s.per_pair:,.0f}" if s.per_pair is not None else "–"
        line = f"{name:<12} {s.requests:>9,.0f} {s.prompt_tokens:>11,.0f} {s.tokens:>11,.0f} {s.pairs:>10,.0f}"
        lines.append(f"{line} {per_pair:>9}" + (f" {money(s.cost):>10}" if priced else ""))
    total = f"; about {money(guess.cost)} in all" if guess.cost is not None else ""
    lines.append(f"the dry run generated {guess.generated} requests ({guess.spent_tokens:,} tokens), now cached{total}")
    return "\n".join(lines)


def judge_report(summary: BuildSummary) -> str:
    """The judge's accuracy per strategy with its interval, beside the paper's figure for the same kind of judge."""
    assert summary.judge is not None
    judge = summary.judge
    paper_name = paper_judge(judge.kind)
    lines = ["", f"{'strategy':<12} {'judged':>6}  {'accuracy':>8}  {'95% interval':>13}  ties  unparsed  "
             f"paper ({paper_name})"]  # fmt: skip
    for name, result in judge.configs.items():
        counts, (low, high) = result.counts, result.interval
        judged = counts["chosen"] + counts["rejected"] + counts["tie"]
        accuracy = "-" if result.accuracy is None else f"{result.accuracy:.0%}"
        paper = STRATEGIES[name].paper_accuracy.get(paper_name)
        lines.append(
            f"{name:<12} {judged:>6}  {accuracy:>8}  {low:>6.0%}–{high:<6.0%}  {counts['tie']:>4}  "
            f"{counts['unparsed']:>8}  {'' if paper is None else f'{paper:.1%}'}"
        )
    failed = sum(result.counts["failed"] for result in judge.configs.values())
    if failed:
        lines.append(f"{failed} pairs not judged: the judge's requests failed (rerun to judge them)")
    if judge.min_judge:
        kept = sum(outcome.count for outcome in summary.outcomes.values())
        lines.append(f"--min-judge {judge.min_judge}: kept {kept} pairs the judge agrees with")
    lines.append(f"judged by {judge.model} ({judge.kind})")
    return "\n".join(lines)


def quality_report(summary: BuildSummary) -> str:
    """The scores per strategy: how often they agree with the pair's sides, their mean, and the curation."""
    assert summary.score_stats is not None
    lines = ["", f"{'strategy':<12} {'rows':>5}  {'agreement':>9}  {'mean score':>10}  curation"]
    for name, report in summary.quality.items():
        if not report.rows:
            continue
        actions = ", ".join(f"{n} {action}" for action, n in sorted((report.curation or {}).items())) or "none"
        written = summary.outcomes[name].count
        lines.append(f"{name:<12} {written:>5}  {report.agreement:>9.0%}  {report.score_mean:>10.2f}  {actions}")
    stats = summary.score_stats
    lines.append(f"scored {stats.pairs} pairs from {stats.sequences} sequence log-probs: {stats.cached} cached, "
                 f"{stats.computed} computed")  # fmt: skip
    return "\n".join(lines)


def evaluate_report(report: Evaluation) -> str:
    """Each trained model's win rate against the reference, overall and per strategy, with its interval."""
    names = list(next(iter(report.table.values())))
    head = f"{'model':<16} {'strategy':<12} {'judged':>6}  {'win rate':>8}  {'95% interval':>13}  wins losses ties"
    lines = ["", head]
    for model, rates in report.table.items():
        for name in names:
            rate = rates[name]
            shown = "-" if rate.rate is None else f"{rate.rate:.0%}"
            low, high = rate.interval
            judged = rate.wins + rate.losses + rate.ties
            lines.append(f"{model:<16} {name:<12} {judged:>6}  {shown:>8}  {low:>6.0%}–{high:<6.0%}  {rate.wins:>4} "
                         f"{rate.losses:>6} {rate.ties:>4}")  # fmt: skip
    lines += ["", f"{report.instructions} held-out instructions of {report.build}, against {report.reference}, judged "
              f"by {report.judge['model']} ({report.judge['kind']}); wrote {report.out} (evaluation.json, "
              "answers.jsonl, win_rate.png)"]  # fmt: skip
    if report.regenerated:
        lines.append(f"{report.regenerated} answers generated again: their model changed since they were cached")
    return "\n".join(lines)


def merge_report(summary: BuildSummary, parts: int) -> str:
    """A merge: each config's rows and drops, and the total."""
    lines = []
    for name, outcome in summary.outcomes.items():
        dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(outcome.dropped.items())) or "0"
        lines.append(f"{name:<12} {outcome.count:>6} rows  dropped {dropped}")
    total = sum(outcome.count for outcome in summary.outcomes.values())
    lines.append(f"merged {parts} parts into {summary.out} ({total} rows) in {summary.seconds:.0f} s")
    return "\n".join(lines)


def push_report(result: PushResult) -> str:
    """A published version: its commit, the configs rebuilt and kept, and how to load it."""
    kept = f"; kept from earlier versions: {', '.join(result.kept)}" if result.kept else ""
    return (
        f"published {result.repo_id} v{result.version} (commit {result.commit[:12]}): {', '.join(result.rebuilt)}"
        f"{kept}\n"
        f'load with: datasets.load_dataset("{result.repo_id}", "{result.rebuilt[0]}", revision="v{result.version}")'
    )


def versions_report(repo_id: str, versions: list[dict[str, Any]]) -> str:
    """The published versions, newest first: commit, rows per config (rebuilt ones starred)."""
    if not versions:
        return f"{repo_id}: no published versions"
    lines = []
    for entry in versions:
        configs = ", ".join(
            f"{name} {rows}{'*' if name in entry['changed'] else ''}" for name, rows in entry["configs"].items()
        )
        untagged = "  (untagged: its push stopped before the tag; rerun that push)" if entry.get("untagged") else ""
        lines.append(f"v{entry['version']:<10} {entry['commit'][:12]}  {configs}{untagged}")
    lines.append("(* rebuilt in that version; the others were kept from an earlier one)")
    return "\n".join(lines)


def money(amount: float | None) -> str:
    """An amount as the tables show it: cents from a dollar up, else three significant digits, never in powers of
    ten (`$0.0000320`)."""
    if amount is None:
        return "–"
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}"
    return f"${amount:.{2 - math.floor(math.log10(amount))}f}"
