"""Benchmark: endpoint generation throughput against the ideal, next to a sequential loop in the same run.

A latency-simulating OpenAI-compatible server (bench/latency_server.py: a fixed delay per request, unlimited
parallelism) runs on loopback; popalign's engine generates all six strategies for `--instructions` instructions at
`--concurrency`. Reported: achieved requests/s as a ratio of the ideal (concurrency / delay), the same for a
sequential loop (concurrency 1) on a few instructions, client CPU time per request, and backend calls per
instruction with and without request sharing.

    python bench/bench_endpoint.py [--instructions 300] [--concurrency 64] [--delay 0.5]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from latency_server import running
from popalign.backends.endpoint import EndpointBackend
from popalign.config import Endpoints
from popalign.contrasts import PAPER, STRATEGIES, StrategyContext
from popalign.engine import Engine
from popalign.generation import GenerationParams
from popalign.prompts import Instruction
from popalign.roles import EndpointSpec
from popalign.templates import TemplateSet


def run(url: str, instructions: list[Instruction], concurrency: int) -> tuple[Engine, float, float]:
    """Generate all six strategies; return the engine (its stats), wall seconds and client CPU seconds."""
    spec = EndpointSpec.parse(url)
    params = GenerationParams(max_new_tokens=64)
    # one served model: the contrast roles differ by their sampling settings, as with one real server
    role_params = {"small": replace(params, temperature=1.2), "second": replace(params, top_p=0.5)}
    roles = dict.fromkeys(("default", "large", "small", "first", "second", "planner"), spec)
    engine = Engine(
        roles,
        params,
        endpoint=EndpointBackend(Endpoints(concurrency=concurrency)),
        role_params=role_params,
        progress=False,
    )
    context = StrategyContext(TemplateSet())
    runs = [(name, STRATEGIES[name].run(i, context)) for i in instructions for name in PAPER]
    wall, cpu = time.perf_counter(), time.process_time()
    engine.run(runs)
    return engine, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instructions", type=int, default=300)
    parser.add_argument("--sequential-instructions", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.5)
    args = parser.parse_args()
    with running(args.delay) as url:
        texts = [f"Write a short note on topic number {n}." for n in range(args.instructions)]
        instructions = [Instruction.from_text(text) for text in texts]
        engine, wall, cpu = run(url, instructions, args.concurrency)
        made = engine.stats.generated
        ideal = args.concurrency / args.delay
        single, single_wall, _ = run(url, instructions[: args.sequential_instructions], 1)
        sequential = single.stats.generated / single_wall
        print(f"latency server: {args.delay:.2f} s per request, unlimited parallelism; six strategies")
        print(f"{'run':<34} {'requests':>9} {'seconds':>8} {'req/s':>8} {'of ideal':>9}")
        print(f"{f'popalign, concurrency {args.concurrency}':<34} {made:>9} {wall:>8.1f} {made / wall:>8.1f} ", end="")
        print(f"{made / wall / ideal:>9.2f}")
        print(f"{'sequential loop (concurrency 1)':<34} {single.stats.generated:>9} {single_wall:>8.1f} ", end="")
        print(f"{sequential:>8.2f} {sequential / (1 / args.delay):>9.2f}")
        print(f"speed-up over the sequential loop: {made / wall / sequential:.1f}x")
        print(f"client CPU time per request: {cpu / made * 1000:.2f} ms")
        count = len(instructions)
        print(
            f"backend calls per instruction (six strategies): {engine.stats.requested / count:.1f} without sharing, "
            f"{made / count:.1f} with sharing"
        )


if __name__ == "__main__":
    main()
