"""The data-quality report of one config: score distribution (with a PNG histogram), agreement of the score
with the strategy's label, length bias, and drop counts."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

QUALITY_DIR = "quality"


def quality_report(rows: list[dict[str, Any]], dropped: dict[str, int]) -> dict[str, Any]:
    """Statistics of one config's scored rows; `agreement` is the share of pairs whose score is positive."""
    scores = [row["score"] for row in rows]
    chosen = [len(row["chosen"][0]["content"]) for row in rows]
    rejected = [len(row["rejected"][0]["content"]) for row in rows]
    report: dict[str, Any] = {"rows": len(rows), "dropped": dict(dropped)}
    if rows:
        report |= {
            "score_mean": round(statistics.fmean(scores), 4),
            "score_median": round(statistics.median(scores), 4),
            "score_min": round(min(scores), 4),
            "score_max": round(max(scores), 4),
            "agreement": round(sum(score > 0 for score in scores) / len(scores), 4),
            "chosen_chars_mean": round(statistics.fmean(chosen), 1),
            "rejected_chars_mean": round(statistics.fmean(rejected), 1),
            "chosen_longer": round(sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows), 4),
        }
    return report


def write_histogram(scores: list[float], strategy: str, out: Path) -> str:
    """Save a histogram of `scores` as `quality/<strategy>_scores.png` under `out`; return its relative path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    relative = f"{QUALITY_DIR}/{strategy}_scores.png"
    (out / QUALITY_DIR).mkdir(parents=True, exist_ok=True)
    figure, axes = pyplot.subplots(figsize=(5, 3), dpi=100)
    axes.hist(scores, bins=min(30, max(5, len(scores) // 2)), color="#4a7ebb")
    axes.axvline(0, color="black", linewidth=1)
    axes.set_title(f"{strategy}: self-reward score (n={len(scores)})")
    axes.set_xlabel("score (> 0: the contrast agrees with the label)")
    axes.set_ylabel("pairs")
    figure.tight_layout()
    figure.savefig(out / relative, format="png", metadata={"Software": None})
    pyplot.close(figure)
    return relative
