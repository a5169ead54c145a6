"""Benchmark: popalign's request path against a bare client at high concurrency, in the same run.

Against the latency-simulating server (bench/latency_server.py), at each concurrency in `--concurrency`:
- a bare loop: `AsyncInferenceClient.chat_completion` under an `asyncio.Semaphore`, `--requests` distinct chats;
- popalign: the engine driving `prefix` runs (two requests each, the same number of requests in all) with the
  endpoint backend and a SQLite generation cache, as a build does.
Reported: requests/s of each, their ratio, and client CPU milliseconds per request.

    python bench/bench_concurrency.py [--concurrency 256,1024] [--requests 6000] [--delay 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from latency_server import running
from popalign.backends.endpoint import EndpointBackend
from popalign.cache import GenerationCache
from popalign.config import Endpoints
from popalign.contrasts import StrategyContext
from popalign.engine import Engine
from popalign.generation import GenerationParams
from popalign.prompts import Instruction
from popalign.roles import EndpointSpec
from popalign.strategies import STRATEGIES
from popalign.templates import TemplateSet


async def bare(url: str, count: int, concurrency: int) -> None:
    from huggingface_hub import AsyncInferenceClient

    limit = asyncio.Semaphore(concurrency)
    async with AsyncInferenceClient(base_url=url, api_key="") as client:

        async def one(n: int) -> None:
            async with limit:
                chat = [{"role": "user", "content": f"Write a short note on topic number {n}."}]
                await client.chat_completion(chat, model="latency-sim", max_tokens=64)

        await asyncio.gather(*(one(n) for n in range(count)))


def engine_run(url: str, count: int, concurrency: int, cache_dir: Path) -> None:
    params = GenerationParams(max_new_tokens=64)
    engine = Engine(
        {"default": EndpointSpec.parse(url)},
        params,
        endpoint=EndpointBackend(Endpoints(concurrency=concurrency)),
        cache=GenerationCache(cache_dir),
        progress=False,
    )
    context = StrategyContext(TemplateSet())
    texts = (f"Write a short note on topic number {n}." for n in range(count // 2))
    engine.run(("prefix", STRATEGIES["prefix"].run(Instruction.from_text(text), context)) for text in texts)


def timed(job) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    job()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="256,1024")
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--delay", type=float, default=0.2)
    args = parser.parse_args()
    count = args.requests
    with running(args.delay) as url:
        print(f"latency server: {args.delay:.2f} s per request; {count} requests per run")
        header = ("concurrency", "bare req/s", "popalign req/s", "ratio", "bare ms", "popalign ms")
        print(" ".join(f"{name:>{width}}" for name, width in zip(header, (11, 10, 14, 6, 8, 11), strict=True)))
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            bare_wall, bare_cpu = timed(lambda c=concurrency: asyncio.run(bare(url, count, c)))
            with tempfile.TemporaryDirectory() as cache_dir:
                wall, cpu = timed(lambda c=concurrency, d=cache_dir: engine_run(url, count, c, Path(d)))
            print(
                f"{concurrency:>11} {count / bare_wall:>10.0f} {count / wall:>14.0f} {bare_wall / wall:>6.2f} "
                f"{bare_cpu / count * 1000:>8.2f} {cpu / count * 1000:>11.2f}"
            )
        print("ratio: popalign's requests/s over the bare loop's (target >= 0.95); ms: client CPU per request")


if __name__ == "__main__":
    main()
