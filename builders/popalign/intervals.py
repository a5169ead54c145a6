"""The interval popalign gives every share it reports (a judge's accuracy, a win rate, what readers found)."""

from __future__ import annotations

import math


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when there are no trials. It holds the
    proportion itself (floating point put 6 of 6 just under 1.0 once).

    >>> wilson(6, 6)[1], wilson(0, 6)[0], [round(bound, 3) for bound in wilson(8, 10)]
    (1.0, 0.0, [0.49, 0.943])
    """
    if not trials:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
