"""A dry run: what a build of the whole input will ask, use and cost, scaled from a build of a sample of it.

The sample is systematic: `size` instructions evenly spaced through the input (the first, then every
`total / size`-th), so a file sorted by topic or length is sampled across. Its answers are generated for real
(and cached, so the build that follows reuses them) and nothing is written."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from popalign.contrasts import STRATEGIES, Dropped
from popalign.costs import cost
from popalign.errors import BudgetSpentError
from popalign.pipeline import open_engine, strategy_context
from popalign.plan import BuildPlan
from popalign.strategies import begun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StrategyEstimate:
    """What one strategy will ask and use over the whole input, and the pairs it will keep (scaled from the
    sample); `cost` where every role it uses has a price."""

    requests: float
    prompt_tokens: float
    tokens: float
    pairs: float
    cost: float | None

    @property
    def per_pair(self) -> float | None:
        """Tokens in and out per kept pair."""
        return (self.prompt_tokens + self.tokens) / self.pairs if self.pairs else None


@dataclass(frozen=True)
class Estimate:
    """A dry run's result: the instructions sampled out of the total, and per strategy what the whole build
    will take; `generated` and `spent_tokens` are what the dry run itself generated (now cached)."""

    sampled: int
    total: int
    strategies: dict[str, StrategyEstimate] = field(default_factory=dict)
    generated: int = 0
    spent_tokens: int = 0

    @property
    def cost(self) -> float | None:
        """The whole build's cost, where every strategy's is known."""
        costs = [s.cost for s in self.strategies.values()]
        return None if not costs or any(c is None for c in costs) else sum(c for c in costs if c is not None)


def sample_indices(total: int, size: int) -> list[int]:
    """`size` indices evenly spaced over `range(total)`, the first one 0 (all of them when `size >= total`).

    >>> sample_indices(10, 4), sample_indices(3, 8)
    ([0, 2, 5, 7], [0, 1, 2])
    """
    size = min(size, total)
    return [i * total // size for i in range(size)]


def estimate_plan(plan: BuildPlan, size: int, *, progress: bool = False) -> Estimate:
    """Generate the plan's strategies for `size` sampled instructions and scale what they used to all of them."""
    instructions = plan.instructions().instructions
    sample = [instructions[i] for i in sample_indices(len(instructions), size)]
    engine = open_engine(plan, progress)  # with the run's --budget: a dry run spends no more than it either
    config = plan.config
    context = strategy_context(plan.templates(), engine, keep_truncated=config.keep_truncated, styles=config.styles)
    names = list(plan.strategies)
    kept = dict.fromkeys(names, 0)

    def collect(index: int, result: object) -> None:
        kept[names[index % len(names)]] += not isinstance(result, Dropped)

    runs = ((name, begun(STRATEGIES[name], instruction, context)) for instruction in sample for name in names)
    planned = {name: STRATEGIES[name].planned(context) for name in names}
    engine.run_each(runs, collect, len(sample) * sum(planned.values()), planned=planned)
    if engine.stats.stopped:
        assert engine.budget is not None
        raise BudgetSpentError(
            f"the budget of {engine.budget.shown()} is spent before the dry run's sample of {len(sample)} instructions "
            f"is answered ({engine.stats.generated} requests generated, each kept in the cache): no estimate from part "
            "of a sample; rerun with a larger --budget, or the dry run without one"
        )
    scale = len(instructions) / len(sample) if sample else 0.0
    estimates = {}
    for name in names:
        counts = engine.stats.by_strategy[name]
        priced = cost(counts.by_role, engine.prices)
        estimates[name] = StrategyEstimate(
            requests=counts.requests * scale,
            prompt_tokens=counts.prompt_tokens * scale,
            tokens=counts.tokens * scale,
            pairs=kept[name] * scale,
            cost=None if priced is None else priced * scale,
        )
    spent = sum(tokens.total for tokens in engine.stats.spent.values())
    return Estimate(len(sample), len(instructions), estimates, engine.stats.generated, spent)
