"""Decontamination and near-duplicates, before any request: an instruction too close to a prompt of a benchmark the
data will be evaluated on (`--decontaminate FILE|ORG/NAME[:SPLIT]`) is dropped as `contaminated`, and one too close
to an earlier instruction of the input (`--near-duplicates`) as `near-duplicate`, the first of each group kept.

"Too close" is datatrove's MinHash deduplication (signatures, buckets with the benchmark as an index, clusters), on
word 3-grams of datatrove's normalised text (lower case, no punctuation, numbers and whitespace folded): with 14
buckets of 8 hashes, a pair is caught with probability 0.92 at a Jaccard similarity of 0.8 and 0.5 at about 0.72
(`MINHASH`). datatrove is the `scale` extra; its steps run here in process, on a temporary folder."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

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
    `near_duplicates`, those close to an earlier kept instruction; both by datatrove's MinHash (`MINHASH`)."""
    if not benchmarks and not near_duplicates:
        return Screening(list(instructions))
    with tempfile.TemporaryDirectory(prefix="popalign-minhash-") as scratch:
        minhash = _MinHash(Path(scratch))
        own = minhash.signatures([i.text for i in instructions], "input")
        contaminated: dict[str, list[Instruction]] = {}
        dropped: set[int] = set()
        for k, benchmark in enumerate(benchmarks):
            index = minhash.index(
                minhash.signatures([i.text for i in benchmark.instructions], f"bench-{k}"), f"index-{k}"
            )
            matched = {doc for doc, _ in minhash.clusters(own, f"found-{k}", index)}
            contaminated[benchmark.source] = [instructions[i] for i in sorted(matched)]
            dropped |= matched
        near: list[int] = []
        if near_duplicates:
            groups: dict[int, list[int]] = {}
            for doc, cluster in minhash.clusters(own, "near"):
                groups.setdefault(cluster, []).append(doc)
            for members in groups.values():
                kept = sorted(doc for doc in members if doc not in dropped)
                near += kept[1:]  # the first of a group stays
    dropped |= set(near)
    return Screening(
        [instruction for i, instruction in enumerate(instructions) if i not in dropped],
        contaminated,
        [instructions[i] for i in sorted(near)],
    )


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


class _MinHash:
    """datatrove's MinHash steps, loaded once (the `scale` extra), run in process on folders of `root`: the input's
    signatures are file 0 of their folder, each document numbered by its place."""

    def __init__(self, root: Path) -> None:
        require("scale", "--decontaminate and --near-duplicates")
        from datatrove.data import Document
        from datatrove.pipeline.dedup import minhash
        from datatrove.utils.hashing import HashConfig
        from datatrove.utils.word_tokenizers import WordTokenizer
        from loguru import logger

        class Words(WordTokenizer):
            """Words of text datatrove's normalisation simplified (its own tokenizers need spaCy or NLTK)."""

            def word_tokenize(self, text: str) -> list[str]:
                return text.split()

            def sent_tokenize(self, text: str) -> list[str]:
                return [text]

            def span_tokenize(self, text: str) -> list[tuple[int, int]]:
                return [(0, len(text))]

        logger.disable("datatrove")  # its steps log every stage; popalign reports the counts
        self.root, self.steps, self.document, self.words = root, minhash, Document, Words()
        self.config = minhash.MinhashConfig(**MINHASH, hash_config=HashConfig(precision=64, hash_fc="sha1"))

    def signatures(self, texts: list[str], name: str) -> Path:
        """The signatures of `texts`, in the folder `name`."""
        documents = (self.document(text=text, id=str(i)) for i, text in enumerate(texts))
        step = self.steps.MinhashDedupSignature(str(self.root / name), config=self.config, language=self.words)
        step.run(documents, rank=0, world_size=1)
        return self.root / name

    def index(self, signatures: Path, name: str) -> Path:
        """An index of some signatures (a benchmark's), in the folder `name`, one file per bucket."""
        for bucket in range(self.config.num_buckets):
            step = self.steps.MinhashBuildIndex(str(signatures), str(self.root / name), name, config=self.config)
            step.run(bucket=bucket, world_size=self.config.num_buckets)
        return self.root / name

    def clusters(self, signatures: Path, name: str, index: Path | None = None) -> list[tuple[int, int]]:
        """(document, cluster) of every input document in a cluster of near-duplicates: against the `index` alone
        (a benchmark's prompts) when given, else among the input's own documents."""
        folder = self.root / name
        for bucket in range(self.config.num_buckets):
            step = self.steps.MinhashDedupBuckets(
                str(signatures), str(folder / "dups"), index_folder=str(index) if index else None, config=self.config
            )
            step.run(rank=bucket, world_size=self.config.num_buckets)
        cluster = self.steps.MinhashDedupCluster(
            str(folder / "dups"), str(folder / "clusters"), config=self.config, save_cluster_id=True
        )
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar, over files read in no time
            cluster.run(world_size=1)
        found = folder / "clusters" / "000000.clusters"
        if not found.is_file():
            return []
        return [(int(doc), int(group)) for doc, group in np.fromfile(found, dtype="<u4").reshape(-1, 2)]
