"""The data-quality report of one config: score distribution (with a PNG histogram), agreement of the score
with the strategy's label, length bias, and drop counts."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from popalign.dataset.records import ConfigRecord, QualityRecord

QUALITY_DIR = "quality"
#: The card's pictures of every build, scored or not: answer lengths and rows with drop reasons per strategy.
OVERVIEW = {"lengths": f"{QUALITY_DIR}/answer_lengths.png", "rows": f"{QUALITY_DIR}/rows_and_drops.png"}
#: The judge's accuracy chart (`popalign judge`).
JUDGE_CHART = f"{QUALITY_DIR}/judge_accuracy.png"


def score_chart(strategy: str) -> str:
    """Where `popalign score` draws a strategy's score histogram."""
    return f"{QUALITY_DIR}/{strategy}_scores.png"


def load_pyplot() -> Any:
    """matplotlib's pyplot on its file-only Agg backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def quality_report(rows: list[dict[str, Any]], dropped: dict[str, int]) -> QualityRecord:
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
    return QualityRecord(**report)


def write_histogram(scores: list[float], strategy: str, out: Path) -> str:
    """Save a histogram of `scores` as `quality/<strategy>_scores.png` under `out`; return its relative path."""
    pyplot = load_pyplot()
    relative = score_chart(strategy)
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


def write_overview(
    lengths: dict[str, tuple[list[int], list[int]]], configs: dict[str, ConfigRecord], out: Path
) -> dict[str, str]:
    """Draw the card's two overview pictures under `out` (see `OVERVIEW`): per strategy, box plots of chosen and
    rejected answer lengths in words, and a bar of rows written stacked with the pairs dropped by reason."""
    pyplot = load_pyplot()
    (out / QUALITY_DIR).mkdir(parents=True, exist_ok=True)
    names = list(configs)
    figure, axes = pyplot.subplots(figsize=(max(5, 1.3 * len(names)), 3.2), dpi=100)
    shown = [name for name in names if lengths.get(name) and lengths[name][0]]
    for offset, side, color in ((-0.2, 0, "#4a7ebb"), (0.2, 1, "#c0504d")):
        positions = [index + offset for index, name in enumerate(names) if name in shown]
        if positions:
            boxes = axes.boxplot([lengths[name][side] for name in shown], positions=positions, widths=0.35,
                                 patch_artist=True, showfliers=False)  # fmt: skip
            for box in boxes["boxes"]:
                box.set_facecolor(color)
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel("words per answer")
    axes.set_title("answer lengths: chosen (blue) vs rejected (red)")
    figure.tight_layout()
    figure.savefig(out / OVERVIEW["lengths"], format="png", metadata={"Software": None})
    pyplot.close(figure)

    reasons = sorted({reason for config in configs.values() for reason in config.dropped})
    figure, axes = pyplot.subplots(figsize=(7.5, max(2.2, 0.45 * len(names) + 1)), dpi=100)
    left = [config.rows for config in configs.values()]
    axes.barh(names, left, color="#5b9b4b", label="rows written")
    palette = ["#dd8452", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd", "#4c72b0"]
    for index, reason in enumerate(reasons):
        counts = [config.dropped.get(reason, 0) for config in configs.values()]
        axes.barh(names, counts, left=left, color=palette[index % len(palette)], label=f"dropped: {reason}")
        left = [a + b for a, b in zip(left, counts, strict=True)]
    axes.invert_yaxis()
    axes.set_xlabel("pairs")
    axes.set_title("rows written and pairs dropped, per strategy")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    figure.savefig(out / OVERVIEW["rows"], format="png", metadata={"Software": None})
    pyplot.close(figure)
    return dict(OVERVIEW)
