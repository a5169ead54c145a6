"""Benchmark: loading the default build's five local roles against loading one model, in the same process, on
each local engine (each in a process of its own).

The roles of the bare demo are the embedded SmolLM2 (default, large, first, planner) and two copies with middle
layers removed (small: 24 layers, second: 26). On transformers the base is loaded once and each copy shares its
weights; on llama.cpp each copy is a GGUF file of its own with a KV cache of its own. Reported: seconds to load
the one model, seconds for all five roles, their ratio, and resident memory after each.

    python bench/bench_load.py [--engine llama.cpp|transformers]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from popalign.backends.llama_cpp import LlamaCppBackend
from popalign.backends.local import LocalBackend
from popalign.roles import DEMO_ROLES, LOCAL_ENGINES, ModelSpec


def rss_mb() -> float:
    """Resident memory now (not the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(engine: str) -> None:
    backend = LlamaCppBackend() if engine == "llama.cpp" else LocalBackend()
    started = time.perf_counter()
    backend.load(ModelSpec.parse(DEMO_ROLES["default"]))
    one, one_rss = time.perf_counter() - started, rss_mb()
    for spec in DEMO_ROLES.values():
        backend.load(ModelSpec.parse(spec))
    five, five_rss = time.perf_counter() - started, rss_mb()
    print(f"{engine:<28} {'seconds':>8} {'RSS MB':>8}")
    print(f"{'one model (default)':<28} {one:>8.1f} {one_rss:>8.0f}")
    print(f"{'five roles (two copies)':<28} {five:>8.1f} {five_rss:>8.0f}")
    print(f"five roles / one model: {five / one:.2f}x the time (target <= 1.3x), {five_rss / one_rss:.2f}x the memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=LOCAL_ENGINES)
    args = parser.parse_args()
    if args.engine:
        measure(args.engine)
        return
    for engine in LOCAL_ENGINES:  # a process each, so neither's memory counts in the other's
        subprocess.run([sys.executable, __file__, "--engine", engine], check=True)


if __name__ == "__main__":
    main()
