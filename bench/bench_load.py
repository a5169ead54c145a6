"""Benchmark: loading the default build's five local roles against loading one model, in the same process.

The roles of the bare demo are the embedded SmolLM2 (default, large, first, planner) and two copies with middle
layers removed (small: 24 layers, second: 26). The base is loaded once; each copy shares its weights. Reported:
seconds to load the one model, seconds for all five roles, their ratio, and resident memory after each.

    python bench/bench_load.py
"""

from __future__ import annotations

import time
from pathlib import Path

from popalign.backends.local import LocalBackend
from popalign.roles import DEMO_ROLES, ModelSpec


def rss_mb() -> float:
    """Resident memory now (not the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    backend = LocalBackend()
    started = time.perf_counter()
    backend.load(ModelSpec.parse(DEMO_ROLES["default"]))
    one, one_rss = time.perf_counter() - started, rss_mb()
    for spec in DEMO_ROLES.values():
        backend.load(ModelSpec.parse(spec))
    five, five_rss = time.perf_counter() - started, rss_mb()
    print(f"{'load':<28} {'seconds':>8} {'RSS MB':>8}")
    print(f"{'one model (default)':<28} {one:>8.1f} {one_rss:>8.0f}")
    print(f"{'five roles (two copies)':<28} {five:>8.1f} {five_rss:>8.0f}")
    print(f"five roles / one model: {five / one:.2f}x the time (target <= 1.3x), {five_rss / one_rss:.2f}x the memory")


if __name__ == "__main__":
    main()
