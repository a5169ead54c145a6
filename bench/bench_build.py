"""Benchmark: local generation tokens/s with batching against one request at a time (same run, embedded
SmolLM2), and the peak memory of a `popalign build`.

    python bench/bench_build.py [--requests 16] [--max-new-tokens 64] [--batch-size 8] [--build-limit 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from popalign.backends.local import LocalBackend
from popalign.generation import GenerationParams, Request, user
from popalign.prompts import load_prompts
from popalign.roles import EMBEDDED, ModelSpec


def tokens_per_second(backend: LocalBackend, requests: list[Request], params: GenerationParams) -> tuple[float, int]:
    started = time.perf_counter()
    generations = backend.generate(ModelSpec(EMBEDDED), requests, params)
    tokens = sum(g.tokens for g in generations)
    return tokens / (time.perf_counter() - started), tokens


def build_peak_rss_mb(limit: int) -> tuple[float, float]:
    """Run `popalign build` in a child process on a fresh cache; return its peak RSS (MB) and wall time (s)."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run(
            [str(Path(sys.executable).with_name("popalign")), "build", "--limit", str(limit), "--out",
             f"{folder}/out", "--cache-dir", f"{folder}/cache", "--no-progress"],
            check=True, capture_output=True,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--build-limit", type=int, default=4)
    args = parser.parse_args()
    texts = [i.text for i in load_prompts().instructions]
    requests = [Request("default", (user(texts[i % len(texts)]),), sample=i) for i in range(args.requests)]
    # min_new_tokens is not exposed: greedy decoding with a fixed budget keeps both arms' work comparable
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0)
    backend = LocalBackend(batch_size=1)
    tokens_per_second(backend, requests[:2], params)  # load the model and warm up
    one_rate, one_tokens = tokens_per_second(backend, requests, params)
    backend.batch_size = args.batch_size
    batch_rate, batch_tokens = tokens_per_second(backend, requests, params)
    peak_mb, build_s = build_peak_rss_mb(args.build_limit)
    result = {
        "requests": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "one_at_a_time_tokens_per_s": round(one_rate, 1),
        f"batch_{args.batch_size}_tokens_per_s": round(batch_rate, 1),
        "speedup": round(batch_rate / one_rate, 2),
        "tokens": [one_tokens, batch_tokens],
        f"build_limit_{args.build_limit}_peak_rss_mb": round(peak_mb),
        f"build_limit_{args.build_limit}_seconds": round(build_s, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
