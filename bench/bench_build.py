"""Benchmark: the default path on the embedded SmolLM2, all in one run. Local generation tokens/s of llama.cpp
(continuously batched, the default for GGUF models) against transformers (padded static batches, the engine
before issue 26) and against `llama-server -np 16` serving the same GGUF to the same requests; then
`popalign build --limit N` end to end on each engine: wall and CPU time, peak memory, truncation drops.

    python bench/bench_build.py [--requests 16] [--max-new-tokens 64] [--build-limit 4] [--skip-builds]

`llama-server` is the one the endpoint tests build (`tests/llama_server.py`, cached in ~/.cache/popalign-tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from popalign.backends.llama_cpp import LlamaCppBackend, model_file
from popalign.backends.local import LocalBackend
from popalign.config import Endpoints
from popalign.generation import GenerationParams, Request, user
from popalign.prompts import load_prompts
from popalign.roles import DEMO_ROLES, EMBEDDED, EndpointSpec, ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llama_server import build_llama_server, serve_llama

SERVER_CACHE = Path.home() / ".cache" / "popalign-tests"


def rate(generate, requests: list[Request], params: GenerationParams) -> dict[str, float]:
    """Tokens/s of one `generate(requests, params)` call, with its CPU seconds (this process and its children)."""
    cpu = _cpu()
    started = time.perf_counter()
    generations = generate(requests, params)
    seconds = time.perf_counter() - started
    tokens = sum(g.tokens for g in generations)
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "cpu_s": round(_cpu() - cpu, 1)}  # fmt: skip


def served(url: str):
    """Generation through popalign's endpoint backend at 16 requests in flight."""
    from popalign.backends.endpoint import EndpointBackend

    def generate(requests: list[Request], params: GenerationParams):
        async def answer_all():
            backend, spec = EndpointBackend(Endpoints(concurrency=16)), EndpointSpec.parse(url)
            await backend.identity(spec)
            try:
                return await asyncio.gather(*(backend.submit(spec, r, params, lambda _: None, lambda *_: None)
                                              for r in requests))  # fmt: skip
            finally:
                await backend.aclose()

        return asyncio.run(answer_all())

    return generate


def build(folder: Path, limit: int, engine: str) -> dict[str, float]:
    """`popalign build --limit N` with the demo roles on `engine`, in a child process on a fresh cache."""
    roles = [f"--model={role}={spec}{',' if ':' in spec else ':'}engine={engine}" for role, spec in DEMO_ROLES.items()]
    out = folder / f"out-{engine}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    command = [str(Path(sys.executable).with_name("popalign")), "build", "--limit", str(limit), "--out", str(out),
               "--cache-dir", str(folder / f"cache-{engine}"), "--no-progress", *roles]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    manifest = json.loads((out / "popalign_build.json").read_text())
    configs = {name: entry for name, entry in manifest["configs"].items() if name != "all"}
    rows = sum(entry["rows"] for entry in configs.values())
    truncated = sum(entry["dropped"].get("truncated", 0) for entry in configs.values())
    return {"seconds": round(seconds, 1), "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime
            - before.ru_stime, 1), "peak_rss_mb": round(after.ru_maxrss / 1024), "rows": rows,
            "truncated_share": round(truncated / (limit * len(configs)), 3)}  # fmt: skip


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--build-limit", type=int, default=4)
    parser.add_argument("--skip-builds", action="store_true", help="only the tokens/s of the three")
    args = parser.parse_args()
    texts = [i.text for i in load_prompts().instructions]
    requests = [Request("default", (user(texts[i % len(texts)]),), sample=i) for i in range(args.requests)]
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0)  # greedy: comparable work
    spec = ModelSpec(EMBEDDED)
    result: dict[str, object] = {"requests": args.requests, "max_new_tokens": args.max_new_tokens,
                                 "cpus": len(os.sched_getaffinity(0))}  # fmt: skip
    # llama.cpp first: torch's worker threads spin for a while after each call and would slow it
    llama = LlamaCppBackend()
    llama.generate(spec, requests[:1], params)  # load, and warm up
    result["llama.cpp, 16 slots"] = rate(lambda r, p: llama.generate(spec, r, p), requests, params)
    local = LocalBackend(batch_size=8)
    local.generate(spec, requests[:1], params)
    result["transformers, batches of 8"] = rate(lambda r, p: local.generate(spec, r, p), requests, params)
    time.sleep(2)  # and let torch's threads rest before the server's turn
    with tempfile.TemporaryDirectory() as folder:
        binary = build_llama_server(SERVER_CACHE)
        with serve_llama(binary, model_file(EMBEDDED), Path(folder) / "server.log", slots=16, context=16384) as url:
            result["llama-server -np 16"] = rate(served(url), requests, params)
    ours = result["llama.cpp, 16 slots"]["tokens_per_s"]  # type: ignore[index]
    result["llama.cpp / transformers"] = round(ours / result["transformers, batches of 8"]["tokens_per_s"], 2)  # type: ignore[index]
    result["llama.cpp / llama-server"] = round(ours / result["llama-server -np 16"]["tokens_per_s"], 2)  # type: ignore[index]
    if not args.skip_builds:
        with tempfile.TemporaryDirectory() as folder:
            for engine in ("transformers", "llama.cpp"):
                result[f"build --limit {args.build_limit}, {engine}"] = build(Path(folder), args.build_limit, engine)
        old, new = (result[f"build --limit {args.build_limit}, {e}"] for e in ("transformers", "llama.cpp"))
        result["build speedup (wall)"] = round(old["seconds"] / new["seconds"], 2)  # type: ignore[index]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
