"""Benchmark: peak memory of an endpoint build as the input grows, measured in the same run.

`popalign build` runs all six strategies against the latency-simulating server (bench/latency_server.py), once
per size in `--sizes`, each in its own process; its peak resident memory comes from `wait4`. Reported: peak RSS
and instructions/s per size, and the ratios of the largest size to the smallest. A build admits runs through a
bounded window and streams finished rows to disk, so the peak should not grow with the input.

    python bench/bench_memory.py [--sizes 1000,10000] [--delay 0.01] [--concurrency 256]

The issue's target is `--sizes 1000,100000` (about 25 minutes on 2 cores at the default delay).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from latency_server import running

POPALIGN = Path(sys.executable).with_name("popalign")


def recipe(folder: Path, url: str, count: int) -> Path:
    """Prompts and a recipe: every role on the one server, the contrast roles told apart by their settings."""
    (folder / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Write a short note on topic number {n}."}) + "\n" for n in range(count))
    )
    roles = {
        "default": {"url": url},
        "large": {"url": url},
        "first": {"url": url},
        "small": {"url": url, "generation": {"temperature": 1.2}},
        "second": {"url": url, "generation": {"top_p": 0.5}},
    }
    path = folder / "recipe.yaml"
    path.write_text(json.dumps({"prompts": "prompts.jsonl", "out": "out", "roles": roles}))  # YAML is JSON's superset
    return path


def build(url: str, count: int, concurrency: int) -> tuple[float, float]:
    """Build `count` instructions; return the process's peak RSS (MB) and wall seconds."""
    with tempfile.TemporaryDirectory() as folder:
        command = [str(POPALIGN), "build", "--recipe", str(recipe(Path(folder), url, count)), "--no-cache",
                   "--no-progress", "--concurrency", str(concurrency)]  # fmt: skip
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"build of {count} failed: {process.stderr.read().decode()[-2000:]}")
        return usage.ru_maxrss / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--delay", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    with running(args.delay) as url:
        results = {size: build(url, size, args.concurrency) for size in sizes}
    print(f"latency server: {args.delay:.2f} s per request; six strategies; concurrency {args.concurrency}")
    print(f"{'instructions':>12} {'peak RSS MB':>12} {'seconds':>8} {'instr/s':>8}")
    for size, (rss, wall) in results.items():
        print(f"{size:>12} {rss:>12.0f} {wall:>8.1f} {size / wall:>8.1f}")
    (small_rss, small_wall), (large_rss, large_wall) = results[sizes[0]], results[sizes[-1]]
    rate = (sizes[-1] / large_wall) / (sizes[0] / small_wall)
    print(f"peak RSS at {sizes[-1]} / at {sizes[0]}: {large_rss / small_rss:.2f}x (target <= 1.3x)")
    print(f"instructions/s at {sizes[-1]} / at {sizes[0]}: {rate:.2f}x")


if __name__ == "__main__":
    main()
