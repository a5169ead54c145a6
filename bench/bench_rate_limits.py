"""Benchmark: endpoint requests against a hosted API's rate limit, in one run.

The latency server (bench/latency_server.py) with `--rps R` answers at most R requests a second (a token bucket
holding one second's worth) and refuses the rest with HTTP 429 and `Retry-After: 1`, as hosted APIs do. The same
`--requests` distinct chats go through popalign's endpoint backend, a fresh server each time:

- fixed concurrency 64 and 256 (popalign before `--adaptive-concurrency`, `--rpm`, `--tpm`);
- `--adaptive-concurrency` (up to 256 in flight): halves its window on a 429, grows while answers come clean;
- `--rpm` at the limit (R x 60) with concurrency 256: paced to the limit before sending.

Reported: answered requests per second as a share of the limit, and retries per 1,000 requests (the 429s the
server sent, counted by the server), with wall and client CPU seconds.

    python bench/bench_rate_limits.py [--rps 50] [--delay 0.2] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request

from latency_server import running
from popalign.backends.endpoint import EndpointBackend, RetryPolicy
from popalign.config import Endpoints
from popalign.generation import GenerationParams, Request, user
from popalign.roles import EndpointSpec


async def ask_all(url: str, count: int, settings: Endpoints) -> int:
    """Send `count` distinct chats through one endpoint backend; return how many were answered."""
    backend = EndpointBackend(settings, retry=RetryPolicy(attempts=20, base=0.5, cap=8.0, max_wait=8.0))
    spec = EndpointSpec.parse(url)
    await backend.identity(spec)
    params = GenerationParams(max_new_tokens=16)

    async def one(n: int) -> bool:
        request = Request("default", (user(f"Write a short note on topic number {n}."),))
        try:
            await backend.submit(spec, request, params, lambda _: None, lambda reason, wait: None)
        except Exception:  # a request that gave up: counted as not answered
            return False
        return True

    try:
        return sum(await asyncio.gather(*(one(n) for n in range(count))))
    finally:
        await backend.aclose()


def measure(rps: float, delay: float, count: int, settings: Endpoints) -> dict[str, float]:
    with running(delay, rps) as url:
        wall, cpu = time.perf_counter(), time.process_time()
        answered = asyncio.run(ask_all(url, count, settings))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with urllib.request.urlopen(f"{url}/stats") as response:
            stats = json.loads(response.read())
    return {
        "share": answered / wall / rps,
        "retries": stats["refused"] / count * 1000,
        "answered": answered,
        "wall": wall,
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rps", type=float, default=50.0)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    modes = {
        "fixed 64": Endpoints(concurrency=64),
        "fixed 256": Endpoints(concurrency=256),
        "adaptive (<= 256)": Endpoints(concurrency=256, adaptive_concurrency=True),
        f"--rpm {args.rps * 60:.0f} (256)": Endpoints(concurrency=256, rpm=int(args.rps * 60)),
    }
    print(f"limit: {args.rps:.0f} requests/s (429 beyond, Retry-After 1); {args.delay:.2f} s per answer; "
          f"{args.requests} requests per run")  # fmt: skip
    print(f"{'mode':<22} {'of the limit':>12} {'retries/1000':>12} {'answered':>8} {'wall s':>7} {'cpu s':>6}")
    for name, settings in modes.items():
        found = measure(args.rps, args.delay, args.requests, settings)
        print(f"{name:<22} {found['share']:>12.2f} {found['retries']:>12.0f} {found['answered']:>8.0f} "
              f"{found['wall']:>7.1f} {found['cpu']:>6.1f}")  # fmt: skip
    print("of the limit: answered requests per second over the server's limit (1.00: at the limit)")


if __name__ == "__main__":
    main()
