"""Decontamination and near-duplicates, before any request: an instruction too close to a prompt of a benchmark the
data will be evaluated on (`--decontaminate FILE|ORG/NAME[:SPLIT]`) is dropped as `contaminated`, and one too close
to an earlier instruction of the input (`--near-duplicates`) as `near-duplicate`, the first of each group kept.

"Too close" is the same text after datatrove's normalisation (lower case, no punctuation, numbers and whitespace
folded), or a MinHash match: datatrove's signatures of word 3-grams of that text, in 14 buckets of 8 hashes, two texts
matching where any bucket is equal (a pair is caught with probability 0.92 at a Jaccard similarity of 0.8 and 0.5 at
about 0.72; `MINHASH`). Each instruction is compared with every benchmark prompt, whatever the benchmark's own
near-duplicates (datatrove's index keeps one prompt of each such group, and its clustering then catches one input of
each); near-duplicates group transitively, as datatrove's clusters do. datatrove is the `scale` extra.

In a conversation, decontamination compares each user turn with each user turn of a benchmark's prompts (a benchmark
question asked anywhere in a dialogue is caught), and near-duplicates compare whole conversations, their user and
assistant turns as one text (a system turn, which `--system` gives every instruction alike, is left out)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from popalign.conversations import transcript
from popalign.extras import require
from popalign.prompts import Instruction, PromptSet, in_shard

#: datatrove's MinHash settings: word n-grams, and buckets of hashes (their product is the signature's length).
MINHASH = {"n_grams": 3, "num_buckets": 14, "hashes_per_bucket": 8}


@dataclass(frozen=True)
class Screening:
    """What screening kept of some instructions (`kept`, in their order) and dropped: by benchmark source, the
    instructions close to one of its prompts; and the near-duplicates of an earlier instruction."""

    kept: list[Instruction]
    contaminated: dict[str, list[Instruction]] = field(default_factory=dict)
    near_duplicates: list[Instruction] = field(default_factory=list)


def screen(instructions: Sequence[Instruction], benchmarks: Sequence[PromptSet], *, near_duplicates: bool) -> Screening:
    """Drop the instructions close to a prompt of any of `benchmarks` (`contaminated`, by source), then, with
    `near_duplicates`, those close to an earlier kept instruction (`_Keys`)."""
    if not benchmarks and not near_duplicates:
        return Screening(list(instructions))
    keys = _Keys()
    asked = [keys.of_turns(i) for i in instructions]
    contaminated: dict[str, list[Instruction]] = {}
    dropped: set[int] = set()
    for benchmark in benchmarks:
        known = {key for prompt in benchmark.instructions for key in keys.of_turns(prompt)}
        matched = {doc for doc, found in enumerate(asked) if not found.isdisjoint(known)}
        contaminated[benchmark.source] = [instructions[i] for i in sorted(matched)]
        dropped |= matched
    near: list[int] = []
    if near_duplicates:
        groups = _groups([keys.of_whole(i, found) for i, found in zip(instructions, asked, strict=True)])
        firsts: dict[int, int] = {}
        for doc in range(len(instructions)):
            if doc not in dropped and firsts.setdefault(groups[doc], doc) != doc:
                near.append(doc)  # the first kept of a group stays
    dropped |= set(near)
    return Screening(
        [instruction for i, instruction in enumerate(instructions) if i not in dropped],
        contaminated,
        [instructions[i] for i in sorted(near)],
    )


def _groups(keys: list[set[Any]]) -> list[int]:
    """The group of each document: documents sharing a key are in one group, transitively (union-find)."""
    parent = list(range(len(keys)))

    def root(doc: int) -> int:
        while parent[doc] != doc:
            parent[doc] = parent[parent[doc]]
            doc = parent[doc]
        return doc

    first: dict[Any, int] = {}
    for doc, found in enumerate(keys):
        for key in found:
            other = first.setdefault(key, doc)
            parent[root(doc)] = root(other)
    return [root(doc) for doc in range(len(keys))]


class _Keys:
    """What two texts must share to be too close: their normalised text, or one bucket of datatrove's MinHash
    signature of it (a text of fewer words than an n-gram has no signature, and is matched by its text alone)."""

    def __init__(self) -> None:
        require("scale", "--decontaminate and --near-duplicates")
        from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
        from datatrove.utils.hashing import HashConfig
        from datatrove.utils.text import simplify_text
        from datatrove.utils.word_tokenizers import WordTokenizer

        class Words(WordTokenizer):
            """Words of text datatrove's normalisation simplified (its own tokenizers need spaCy or NLTK)."""

            def word_tokenize(self, text: str) -> list[str]:
                return text.split()

            def sent_tokenize(self, text: str) -> list[str]:
                return [text]

            def span_tokenize(self, text: str) -> list[tuple[int, int]]:
                return [(0, len(text))]

        config = MinhashConfig(**MINHASH, hash_config=HashConfig(precision=64, hash_fc="sha1"))
        self.signature = MinhashDedupSignature("memory://popalign-minhash", config=config, language=Words())
        self.simplify = lambda text: simplify_text(text, config.norm_config)

    def of(self, text: str) -> set[Any]:
        """The keys of one text: ("text", its normalised form) and (bucket, its hashes) for each bucket."""
        shingles = self.signature.get_shingles(text)
        buckets = self.signature.get_signature(shingles) if shingles.size else []
        return {("text", self.simplify(text)), *((bucket, tuple(hashes)) for bucket, hashes in enumerate(buckets))}

    def of_turns(self, instruction: Instruction) -> set[Any]:
        """The keys of each user turn of an instruction (its text alone for a plain one)."""
        return set().union(*(self.of(text) for role, text in instruction.messages if role == "user"))

    def of_whole(self, instruction: Instruction, asked: set[Any]) -> set[Any]:
        """The keys of a whole conversation: its user and assistant turns as one text. A single user turn's are
        `asked`, the keys `of_turns` gave it, not worked out again."""
        spoken = [turn for turn in instruction.messages if turn[0] != "system"]
        return asked if len(spoken) == 1 else self.of(transcript(spoken))


def screened(
    prompt_set: PromptSet, benchmarks: Sequence[PromptSet], *, near_duplicates: bool, shard: tuple[int, int] | None
) -> PromptSet:
    """A whole prompt set screened (`screen`), then cut to its `shard`: what it dropped is recorded by source (what
    each benchmark is, and how many of the shard's instructions it caught) in `screening`, and `total` counts the
    instructions kept of the whole set, as the shards share it."""
    result = screen(prompt_set.instructions, benchmarks, near_duplicates=near_duplicates)
    kept = [i for i in result.kept if shard is None or in_shard(i, shard)]

    def count(instructions: list[Instruction]) -> int:
        return sum(1 for i in instructions if shard is None or in_shard(i, shard))

    sources = [
        {**benchmark.describe(), "contaminated": count(result.contaminated[benchmark.source])}
        for benchmark in benchmarks
    ]
    for source in sources:
        source.pop("duplicates", None)
    caught = {i.prompt_id: i for found in result.contaminated.values() for i in found}  # once, whatever caught it
    screening = {
        "method": "datatrove MinHash, word {n_grams}-grams, {num_buckets} buckets of {hashes_per_bucket}".format(
            **MINHASH
        ),
        "benchmarks": sources,
        "contaminated": count(list(caught.values())),
        "near_duplicates": count(result.near_duplicates) if near_duplicates else None,
    }
    return replace(prompt_set, instructions=kept, total=len(result.kept), shard=shard, screening=screening)


def merged_screening(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The screening record of a build made in shards: what each part dropped of its instructions, added up."""
    merged = {**parts[0], "benchmarks": [dict(b) for b in parts[0]["benchmarks"]]}
    for key in ("contaminated", "near_duplicates"):
        merged[key] = None if merged[key] is None else sum(part[key] for part in parts)
    for k, benchmark in enumerate(merged["benchmarks"]):
        benchmark["contaminated"] = sum(part["benchmarks"][k]["contaminated"] for part in parts)
    return merged
