"""Benchmark: how often the embedded SmolLM2 runs to the token limit (an answer caught in a repetition loop, whose
pair is dropped as truncated) under each anti-loop setting, on the same plain requests in one run: two draws of
each bundled instruction at the demo's temperature, top-p and 384 tokens, on llama.cpp.

    python bench/bench_loops.py [--instructions 16]
"""

from __future__ import annotations

import argparse
import json
import time

from popalign.backends.llama_cpp import LlamaCppBackend
from popalign.generation import GenerationParams, Request, user
from popalign.prompts import load_prompts
from popalign.roles import EMBEDDED, ModelSpec

SETTINGS = {
    "none": {},
    "frequency_penalty 0.3 (the demo's default)": {"frequency_penalty": 0.3},
    "frequency_penalty 0.5": {"frequency_penalty": 0.5},
    "presence_penalty 0.5": {"presence_penalty": 0.5},
    "repetition_penalty 1.1": {"repetition_penalty": 1.1},
    "repetition_penalty 1.2": {"repetition_penalty": 1.2},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", type=int, default=16)
    args = parser.parse_args()
    texts = [i.text for i in load_prompts().instructions][: args.instructions]
    requests = [Request("default", (user(text),), sample=draw) for text in texts for draw in (0, 1)]
    backend, spec = LlamaCppBackend(), ModelSpec(EMBEDDED)
    result: dict[str, object] = {"answers": len(requests)}
    for name, values in SETTINGS.items():
        started = time.perf_counter()
        answers = backend.generate(spec, requests, GenerationParams(**values))
        result[name] = {"cut": sum(a.truncated for a in answers), "tokens": sum(a.tokens for a in answers),
                        "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
