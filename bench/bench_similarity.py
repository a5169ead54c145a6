"""Benchmark: the similarity checks a strategy step runs on the event loop (`strategies.similarity`, word level,
for `plan-is-answer`; `strategies.is_near_copy`, character level, for `near-copy`), next to the difflib ratios
they replaced, in the same run, on answers of 4,000 characters; and how often the two measures fall on different
sides of the thresholds (0.5 and 0.9) on pairs of real answers: the texts in the generation cache (default:
`~/.cache/popalign`), or generated ones where it is empty.

    python bench/bench_similarity.py [--cache-dir DIR] [--pairs 2000]
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import random
import sqlite3
import statistics
import time
from pathlib import Path

from rapidfuzz.distance import Indel

from popalign.cache import default_cache_dir
from popalign.strategies import PLAN_ANSWER_RATIO, REPEAT_RATIO, is_near_copy, similarity

WORDS = ("the", "tide", "rises", "twice", "a", "day", "because", "the", "moon", "pulls", "the", "ocean", "toward",
         "it", "while", "the", "earth", "turns")  # fmt: skip


def difflib_words(first: str, second: str) -> float:
    words = [text.casefold().split() for text in (first, second)]
    return difflib.SequenceMatcher(None, *words, autojunk=False).ratio()


def difflib_chars(first: str, second: str) -> float:
    return difflib.SequenceMatcher(None, first.strip(), second, autojunk=False).ratio()


def text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    while sum(len(word) + 1 for word in out) < chars:
        out.append(rng.choice(WORDS))
    return " ".join(out)[:chars]


def per_call_ms(function, pairs: list[tuple[str, str]]) -> float:
    started = time.perf_counter()
    for first, second in pairs:
        function(first, second)
    return 1000 * (time.perf_counter() - started) / len(pairs)


def cached_texts(folder: Path, limit: int) -> list[str]:
    path = folder / "generations.sqlite"
    if not path.is_file():
        return []
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT text FROM generations LIMIT ?", (limit,)).fetchall()
    return [value for (value,) in rows if isinstance(value, str) and len(value) > 40]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--pairs", type=int, default=2000)
    options = parser.parse_args()
    rng = random.Random(0)

    long_pairs = [(text(rng, 4000), text(rng, 4000)) for _ in range(5)]
    checks = (("word level (plan-is-answer)", similarity, difflib_words),
              ("character level (near-copy)", is_near_copy, difflib_chars))  # fmt: skip
    for name, new, old in checks:
        ms_new, ms_old = per_call_ms(new, long_pairs), per_call_ms(old, long_pairs)
        print(f"{name}, 4,000-character answers: rapidfuzz {ms_new:.3f} ms, difflib {ms_old:.1f} ms per check "
              f"(ratio {ms_old / ms_new:.0f}x)")  # fmt: skip

    texts = cached_texts(options.cache_dir, 400)
    source = f"{len(texts)} cached answers from {options.cache_dir}"
    if len(texts) < 20:
        texts = [text(rng, rng.randint(80, 1200)) for _ in range(200)]
        source = "200 generated texts (the cache is empty)"
    pairs = list(itertools.islice(itertools.combinations(texts, 2), options.pairs))
    rng.shuffle(pairs)
    words = [(similarity(a, b), difflib_words(a, b)) for a, b in pairs]
    chars = [(Indel.normalized_similarity(a.strip(), b), difflib_chars(a, b)) for a, b in pairs]
    for name, values, threshold in (("word", words, PLAN_ANSWER_RATIO), ("character", chars, REPEAT_RATIO)):
        crossed = sum((new >= threshold) != (old >= threshold) for new, old in values)
        gaps = [new - old for new, old in values]
        print(f"{name} level on {len(values)} pairs of {source}: rapidfuzz - difflib median "
              f"{statistics.median(gaps):+.3f}, max {max(gaps):+.3f}; {crossed} pairs on different sides of "
              f"{threshold}")  # fmt: skip


if __name__ == "__main__":
    main()
