"""Benchmark: the endpoint path with strategies found through the plugin registry and every request's tokens
counted, against the same path before either existed (`--baseline`, a commit: by default the last one before
them), in the same run, on the same latency server.

Each side runs in a process of its own (`--worker`), importing popalign from its own checkout (the baseline's from
a temporary git worktree), and generates the paper's six strategies for `--instructions` instructions at
`--concurrency`; the sides alternate `--rounds` times. Reported per side: requests/s and client CPU time per
request (median of the rounds), and their ratios, new over baseline (requests/s at least 0.98 is no cost).

    python bench/bench_plugins.py [--instructions 400] [--concurrency 64] [--delay 0.02] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
PAPER = ("prefix", "demon", "elicitive", "nparam", "leaderboard", "refine")
BASELINE = "b02ea00"  # the last commit before plugin strategies and token accounting


def worker(url: str, instructions: int, concurrency: int) -> None:
    """Generate the six strategies with whatever popalign this process imports; print requests, wall, CPU."""
    from popalign.backends.endpoint import EndpointBackend
    from popalign.config import Endpoints
    from popalign.contrasts import StrategyContext
    from popalign.engine import Engine
    from popalign.generation import GenerationParams
    from popalign.prompts import Instruction
    from popalign.roles import EndpointSpec
    from popalign.strategies import STRATEGIES
    from popalign.templates import TemplateSet

    spec, params = EndpointSpec.parse(url), GenerationParams(max_new_tokens=64)
    role_params = {"small": replace(params, temperature=1.2), "second": replace(params, top_p=0.5)}
    roles = dict.fromkeys(("default", "large", "small", "first", "second", "planner", "reviser"), spec)
    backend = EndpointBackend(Endpoints(concurrency=concurrency))
    engine = Engine(roles, params, endpoint=backend, role_params=role_params, progress=False)
    context = StrategyContext(TemplateSet())
    texts = [Instruction.from_text(f"Write a short note on topic number {n}.") for n in range(instructions)]
    wall, cpu = time.perf_counter(), time.process_time()
    engine.run([(name, STRATEGIES[name].run(text, context)) for text in texts for name in PAPER])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"requests": engine.stats.generated, "wall": wall, "cpu": cpu}))


def side(builders: Path, url: str, args: argparse.Namespace) -> dict[str, float]:
    """One round of one side: the worker in its own process, importing popalign from `builders`."""
    env = {**os.environ, "PYTHONPATH": str(builders)}
    command = [sys.executable, __file__, "--worker", url, "--instructions", str(args.instructions)]
    command += ["--concurrency", str(args.concurrency)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instructions", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help="the commit to compare with")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.instructions, args.concurrency)
        return
    sys.path.insert(0, str(HERE))
    from latency_server import running

    with tempfile.TemporaryDirectory() as scratch, running(args.delay) as url:
        old = Path(scratch) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.baseline], check=True,
                       capture_output=True)  # fmt: skip
        try:
            rounds: dict[str, list[dict[str, float]]] = {"baseline": [], "new": []}
            for _ in range(args.rounds):
                rounds["baseline"].append(side(old / "builders", url, args))
                rounds["new"].append(side(ROOT / "builders", url, args))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=True)
    rate = {name: statistics.median(r["requests"] / r["wall"] for r in runs) for name, runs in rounds.items()}
    cpu = {name: statistics.median(r["cpu"] / r["requests"] * 1000 for r in runs) for name, runs in rounds.items()}
    requests = rounds["new"][0]["requests"]
    print(f"latency server: {args.delay:.3f} s per request; six strategies, {args.instructions} instructions, "
          f"{requests} requests a run, concurrency {args.concurrency}, {args.rounds} rounds (medians)")  # fmt: skip
    print(f"{'side':<40} {'req/s':>8} {'CPU ms/req':>11}")
    print(f"{f'baseline ({args.baseline})':<40} {rate['baseline']:>8.1f} {cpu['baseline']:>11.3f}")
    print(f"{'plugin registry + token accounting':<40} {rate['new']:>8.1f} {cpu['new']:>11.3f}")
    print(f"requests/s, new over baseline: {rate['new'] / rate['baseline']:.3f} (no cost at >= 0.98); "
          f"CPU per request: {cpu['new'] / cpu['baseline']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
