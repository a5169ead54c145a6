"""Merging: the parts of a sharded build (`popalign build --shard K/N`, every K once) into one build."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from popalign.costs import merged_usage, parse_prices
from popalign.dataset.card import write_card_and_manifest
from popalign.dataset.folder import Manifest, check_out, copy_recipe, open_manifest, staged
from popalign.dataset.integrity import check_build
from popalign.dataset.records import ConfigRecord
from popalign.dataset.rows import StrategyOutcome, keep_sides, read_rows, require_rows, write_configs
from popalign.decontamination import merged_screening
from popalign.errors import ShardError
from popalign.pipeline import BuildSummary

#: Counts a build records per config where it has any, which a merge adds up over its parts.
COUNTED = ("reasoning_tokens", "preambles_removed")


def merged_counts(records: list[ConfigRecord]) -> dict[str, Any]:
    """The parts' `COUNTED` counts and answers asked in a shape (`shapes`), added up (None where no part has any)."""
    merged: dict[str, Any] = {key: sum(getattr(r, key) or 0 for r in records) or None for key in COUNTED}
    shapes = [record.shapes for record in records if record.shapes]
    merged["shapes"] = {key: sum(counts[key] for counts in shapes) for key in shapes[0]} if shapes else None
    return merged


def merge_builds(parts: list[Path], out: Path) -> BuildSummary:
    """Join the shard folders of one build (`popalign build --shard K/N`, every K once) into one dataset folder.

    The parts must agree on everything but their shard: prompts source, roles, parameters and templates.

    Raises:
        ShardError: the parts are not every shard of one unscored, unjudged build, once each.
        NotABuildError: a part is not a build folder.
        TamperedBuildError: a part's files are not what its manifest records.
    """
    started = time.monotonic()
    manifests = [open_manifest(part) for part in parts]
    for part, manifest in zip(parts, manifests, strict=True):
        check_build(part, manifest)
    first = manifests[0]
    counts = {manifest.prompts.get("shard", "").partition("/")[2] for manifest in manifests}
    if any("shard" not in manifest.prompts for manifest in manifests) or len(counts) != 1:
        raise ShardError(f"{parts[0]}: merge joins the parts of one sharded build (popalign build --shard K/N)")
    for part, manifest in zip(parts, manifests, strict=True):
        for step in ("score", "judge"):
            if getattr(manifest, step) is not None:
                raise ShardError(f"{part}: this part is {step}d; merge the parts before, then run popalign {step}")
        for key in (
            "backend",
            "roles",
            "identities",
            "params",
            "role_params",
            "template_hashes",
            "configs",
            "test_size",
        ):
            if _agreed(manifest, key) != _agreed(first, key):
                raise ShardError(f"{part}: its {key} differ from those of {parts[0]}; parts of one build must agree")
        keys = ("source", "sha256", "revision", "total")
        if [manifest.prompts.get(key) for key in keys] != [first.prompts.get(key) for key in keys]:
            raise ShardError(f"{part}: built from other prompts than {parts[0]}")
    shards = {manifest.prompts["shard"]: part for part, manifest in zip(parts, manifests, strict=True)}
    count = int(counts.pop())
    if len(shards) != len(parts):
        raise ShardError(f"{parts[-1]}: a shard is given twice (each of 1..{count} once)")
    missing = [f"{k}/{count}" for k in range(1, count + 1) if f"{k}/{count}" not in shards]
    if missing:
        raise ShardError(f"shard {missing[0]} is missing: merge needs all {count} parts")
    if out.resolve() in {part.resolve() for part in parts}:
        raise ShardError(f"{out}: write the merged dataset to a new folder, not into a part")
    check_out(out)
    outcomes = {name: StrategyOutcome() for name in first.configs}
    seen: dict[tuple[str, str], Path] = {}
    for k in range(1, count + 1):
        part = shards[f"{k}/{count}"]
        manifest = manifests[parts.index(part)]
        for name, config in manifest.configs.items():
            rows = read_rows(part, name) if config.rows else []
            outcomes[name].dropped.update(config.dropped)
            outcomes[name].cut_kept += config.cut_kept()
            for row in rows:
                if (name, row["prompt_id"]) in seen:
                    raise ShardError(
                        f"{part}: {name} row {row['prompt_id'][:12]} is also in {seen[name, row['prompt_id']]}"
                    )
                seen[name, row["prompt_id"]] = part
                outcomes[name].rows.append(row)
    total = sum(manifest.prompts["count"] for manifest in manifests)
    if total != first.prompts["total"]:
        raise ShardError(f"the parts hold {total} instructions but their prompts have {first.prompts['total']}")
    prompts = {key: first.prompts[key] for key in ("source", "sha256", "revision", "limit") if key in first.prompts}
    prompts |= {"count": total, "duplicates": first.prompts["duplicates"]}
    if "screening" in first.prompts:  # each part counted what it dropped of its own instructions
        prompts["screening"] = merged_screening([manifest.prompts["screening"] for manifest in manifests])
    require_rows(outcomes, out)
    with staged(out) as folder:
        configs = keep_sides(write_configs(outcomes, folder, first.max_shard_size, first.test_size), first.configs)
        prices = parse_prices(first.prices or {})
        for name, config in configs.items():
            parts_usage = [manifest.configs[name] for manifest in manifests]
            configs[name] = replace(
                config, **merged_usage(parts_usage, config.rows, prices) | merged_counts(parts_usage)
            )
        manifest = replace(first, prompts=prompts | {"merged_shards": count}, configs=configs)
        copy_recipe(parts[0], folder, drop_shard=True)
        write_card_and_manifest(manifest, folder, out)
    return BuildSummary(
        out=out,
        outcomes=outcomes,
        roles=first.roles,
        duplicates=first.prompts["duplicates"],
        stats=None,
        seconds=time.monotonic() - started,
    )


def _agreed(manifest: Manifest, key: str) -> Any:
    """What parts of one build must share: for `configs`, only which strategies were built."""
    value = getattr(manifest, key)
    return sorted(value) if key == "configs" else value
