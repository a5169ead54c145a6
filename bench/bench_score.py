"""Benchmark: DLMA scoring throughput (pairs/s) of the local backend, batched against one pair at a time,
measured in the same run on the embedded SmolLM2 with the bundled instructions.

    python bench/bench_score.py [--pairs 16] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import time

from popalign.backends.local import LocalBackend
from popalign.contrasts import StrategyContext
from popalign.dataset.schema import make_row
from popalign.prompts import load_prompts
from popalign.roles import ModelSpec
from popalign.scoring import LocalScorer, score_rows
from popalign.templates import TemplateSet


def pairs_per_second(backend: LocalBackend, rows: list[dict], context: StrategyContext) -> float:
    tokenizer = backend.tokenizer("smollm2")

    def render(chat: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

    started = time.perf_counter()
    score_rows(rows, scorer=LocalScorer(backend, ModelSpec("smollm2")), render=render, context=context)
    return len(rows) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    options = parser.parse_args()
    instructions = load_prompts(limit=options.pairs).instructions
    rows = [
        make_row(strategy="prefix", instruction=i.text, prompt_id=i.prompt_id, chosen=f"A careful answer to: {i.text}",
                 rejected="No.", chosen_model="m", rejected_model="m")
        for i in instructions
    ]  # fmt: skip
    context = StrategyContext(TemplateSet(), seed=0)
    batched, single = LocalBackend(batch_size=options.batch_size), LocalBackend(batch_size=1)
    for backend in (batched, single):
        backend.load(ModelSpec("smollm2"))
    pairs_per_second(single, rows[:2], context)  # warm-up
    one = pairs_per_second(single, rows, context)
    many = pairs_per_second(batched, rows, context)
    print(f"{len(rows)} pairs, 4 sequence log-probs each, SmolLM2-135M on CPU")
    print(f"  one pair at a time: {one:6.2f} pairs/s")
    print(f"  batch {options.batch_size}:            {many:6.2f} pairs/s  ({many / one:.2f}x)")


if __name__ == "__main__":
    main()
