"""Benchmark: LLM-judge throughput (pairs/s) against an endpoint at concurrency 64, next to one request at a time
in the same run.

A latency-simulating OpenAI-compatible server (bench/latency_server.py: a fixed delay per request, unlimited
parallelism) runs on loopback; popalign's engine judges `--pairs` synthetic pairs, each in both orders, exactly as
`popalign judge` does (`popalign.judging.judge_run`). Reported: pairs/s at `--concurrency` and at concurrency 1 (on
`--sequential-pairs`), their ratio, the ideal ratio (concurrency), and client CPU time per pair.

    python bench/bench_judge.py [--pairs 1000] [--concurrency 64] [--delay 0.2]
"""

from __future__ import annotations

import argparse
import time

from latency_server import running
from popalign.backends.endpoint import EndpointBackend
from popalign.config import Endpoints
from popalign.engine import Engine
from popalign.generation import GenerationParams
from popalign.judging import judge_run
from popalign.roles import EndpointSpec
from popalign.templates import TemplateSet


def pairs(count: int) -> list[dict]:
    """Synthetic rows in the dataset's format, distinct so no request is shared or cached."""
    return [
        {
            "strategy": "prefix",
            "prompt": [{"role": "user", "content": f"Explain topic number {n} to a student."}],
            "chosen": [{"role": "assistant", "content": f"A careful, complete explanation of topic {n}."}],
            "rejected": [{"role": "assistant", "content": f"A vague remark on topic {n}."}],
        }
        for n in range(count)
    ]


def judge(url: str, rows: list[dict], concurrency: int) -> tuple[float, float]:
    """Judge `rows` in both orders; return wall and client CPU seconds."""
    params = GenerationParams(max_new_tokens=16, temperature=0.0, top_p=1.0)
    engine = Engine(
        {"judge": EndpointSpec.parse(url)},
        params,
        endpoint=EndpointBackend(Endpoints(concurrency=concurrency)),
        progress=False,
    )
    templates = TemplateSet()
    wall, cpu = time.perf_counter(), time.process_time()
    engine.run([(row["strategy"], judge_run(row, templates)) for row in rows], expected=2 * len(rows))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--sequential-pairs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    with running(args.delay) as url:
        rows = pairs(args.pairs + args.sequential_pairs)
        wall, cpu = judge(url, rows[: args.pairs], args.concurrency)
        single_wall, _ = judge(url, rows[args.pairs :], 1)
        fast, slow = args.pairs / wall, args.sequential_pairs / single_wall
        print(f"latency server: {args.delay:.2f} s per request, unlimited parallelism; two requests per pair")
        print(f"{'run':<28} {'pairs':>6} {'seconds':>8} {'pairs/s':>8}")
        print(f"{f'judge, concurrency {args.concurrency}':<28} {args.pairs:>6} {wall:>8.1f} {fast:>8.1f}")
        print(f"{'judge, one at a time':<28} {args.sequential_pairs:>6} {single_wall:>8.1f} {slow:>8.2f}")
        print(f"ratio: {fast / slow:.1f}x (ideal {args.concurrency}x)")
        print(f"client CPU time per pair: {cpu / args.pairs * 1000:.2f} ms")


if __name__ == "__main__":
    main()
