"""Render the dataset card (README.md) of a built folder: YAML `configs:` for `load_dataset`, then the body."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from popalign.config import DEFAULT_LICENSE, LICENSE_FILE, Card
from popalign.contrasts import PAPER_JUDGES, STRATEGIES, paper_judge
from popalign.dataset.flags import carry_flags, review_record
from popalign.dataset.folder import (
    CARD,
    Manifest,
    file_digests,
    open_manifest,
    split_pattern,
    write_manifest,
    write_text,
)
from popalign.dataset.quality import OVERVIEW
from popalign.dataset.records import ConfigRecord
from popalign.errors import ConfigError
from popalign.intervals import wilson
from popalign.model_identity import escaped
from popalign.prompts import BUNDLED_LABEL
from popalign.resources import shipped_dir
from popalign.roles import EMBEDDED, ModelSpec
from popalign.version import __version__, installed_version

CARD_TEMPLATE = "README.md.jinja"
#: The config holding every strategy's rows (with the `strategy` column); the card's default.
ALL_CONFIG = "all"


def size_category(rows: int) -> str:
    """The Hub's size bucket for a row count."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "n>1M"


#: What the card shows of each config's record as it is (the rest it words: models, rows, drops, lengths).
_CARD_FIELDS = (
    "truncation", "changed_in", "tokens", "reasoning_tokens", "requests", "prompt_tokens", "usage", "tokens_per_pair",
    "cost", "cost_per_pair", "edits", "example", "turns",
)  # fmt: skip


def render_card(manifest: Manifest, *, repo_id: str, versions: list[dict[str, Any]] | None = None) -> str:
    """The README.md of a built folder, from its manifest (see `pipeline.build_dataset`); `repo_id` is what
    the card tells users to load (the folder, or the Hub repository it is published to), `versions` the
    published versions, oldest first (see `publish.push_dataset`)."""
    built = {name: config for name, config in manifest.configs.items() if config.rows}
    details = card_details(manifest)
    hub_repo = "/".join(manifest.prompts["source"].split(":")[0].split("/")[:2])  # without a folder of it
    hub_prompts = hub_repo if manifest.prompts.get("revision") else None
    card_data = DatasetCardData(
        language=details.languages,
        license=manifest.license,
        **(
            {"license_name": details.license_name, "license_link": details.license_link}
            if manifest.license == DEFAULT_LICENSE
            else {}
        ),
        annotations_creators=["machine-generated"],
        **({"source_datasets": [hub_prompts]} if hub_prompts else {}),
        task_categories=["text-generation"],
        tags=["dpo", "preference", "synthetic", "popalign", "trl"],
        pretty_name=details.pretty_name,
        size_categories=size_category(sum(c.rows for c in built.values())),
        configs=[
            {
                "config_name": ALL_CONFIG,
                "data_files": [
                    {
                        "split": split,
                        "path": [split_pattern(name, split) for name in built if split in _splits(built[name])],
                    }
                    for split in ("train", "test")
                    if any(split in _splits(c) for c in built.values())
                ],
                "default": True,
            },
            *(
                {
                    "config_name": name,
                    "data_files": [{"split": split, "path": split_pattern(name, split)} for split in _splits(c)],
                }
                for name, c in built.items()
            ),
        ],
        dataset_info=[
            {"config_name": ALL_CONFIG, **_combined_info([c.dataset_info or {} for c in built.values()])},
            *({"config_name": name, **(c.dataset_info or {})} for name, c in built.items()),
        ],
    )
    roles = manifest.roles
    configs = [
        {
            "name": name,
            "kind": STRATEGIES[name].kind,
            "chosen": STRATEGIES[name].sides(manifest.styles)[0],
            "rejected": STRATEGIES[name].sides(manifest.styles)[1],
            **{key: getattr(c, key) for key in _CARD_FIELDS},
            "description": _describe(name, c.chosen_model, c.rejected_model),
            "chosen_model": _cell(c.chosen_model or roles[STRATEGIES[name].chosen_role]),
            "rejected_model": _cell(c.rejected_model or roles[STRATEGIES[name].rejected_role]),
            "rows": c.rows or "0 (no config: every pair dropped)",
            "dropped_text": ", ".join(f"{n} {reason}" for reason, n in c.dropped.items()) or "0",
            "chosen_chars": "–" if c.chosen_chars is None else c.chosen_chars,
            "rejected_chars": "–" if c.rejected_chars is None else c.rejected_chars,
            "system_turns": c.system_turns or 0,
        }
        for name, c in manifest.configs.items()
    ]
    card = DatasetCard.from_template(
        card_data,
        template_path=str(shipped_dir("dataset_cards") / CARD_TEMPLATE),
        repo_id=repo_id,
        all_config=ALL_CONFIG,
        example_config="elicitive" if "elicitive" in built else next(iter(built)),
        demo_grade=any(getattr(_local_spec(model), "source", None) == EMBEDDED for model in roles.values()),
        turn_columns=sorted({int(n) for c in configs if c["turns"] for n in c["turns"]}),
        drop_reasons={
            reason: text
            for reason, text in STRATEGIES.drop_reasons().items()
            if any(reason in c.dropped for c in manifest.configs.values())
        },
        **manifest.styles,
        keep_truncated=manifest.keep_truncated,
        configs=configs,
        prompts=manifest.prompts,
        prompts_file=_prompts_file(manifest.prompts),
        backend=manifest.backend,
        roles=roles,
        role_params=manifest.role_params,
        prices=manifest.prices,
        costed=any(c.requests for c in manifest.configs.values()),
        versions=list(reversed(versions or [])),
        kept=sorted(
            name for name, c in manifest.configs.items() if versions and c.changed_in != versions[-1]["version"]
        ),
        latest=(versions or [{}])[-1].get("version"),
        model_notes=manifest.model_notes,
        sent=manifest.sent,
        params=manifest.params,
        template_hashes=manifest.template_hashes,
        score=manifest.score,
        quality=manifest.quality or {},
        judge=manifest.judge,
        review=manifest.review,
        agreement=_agreement,
        overview=manifest.overview,
        license=manifest.license,
        test_size=manifest.test_size,
        paper={judge: STRATEGIES.paper_accuracy(judge) for judge in PAPER_JUDGES},
        paper_judge=paper_judge(manifest.judge.kind) if manifest.judge else None,
        popalign_version=__version__,
        datasets_version=version("datasets"),
        transformers_version=installed_version("transformers"),
    )
    return str(card)


def _prompts_file(prompts: dict[str, Any]) -> str | None:
    """The prompts file a reproduction needs beside the recipe: none for the bundled set or a Hub dataset."""
    if prompts.get("revision") or prompts["source"] == BUNDLED_LABEL:
        return None
    return prompts["source"]


def _splits(config: ConfigRecord) -> list[str]:
    """The splits a written config has files for: `train`, and `test` when it holds test rows."""
    return [split for split, rows in (config.splits or {"train": config.rows}).items() if rows]


def _combined_info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """The `dataset_info` of the `all` config: the shared features, and the strategies' sizes added up per split."""
    splits = [split for info in infos for split in info.get("splits", [])]
    names = list(dict.fromkeys(split["name"] for split in splits if split.get("num_examples")))
    return {
        "features": copy.deepcopy(infos[0]["features"]),  # its own copy: the YAML is written plain, no alias
        "splits": [
            {
                "name": name,
                **{
                    key: sum(split.get(key, 0) for split in splits if split["name"] == name)
                    for key in ("num_bytes", "num_examples")
                },
            }
            for name in names
        ],
        "dataset_size": sum(info.get("dataset_size", 0) for info in infos),
    }


def _agreement(counts: tuple[int, int]) -> str:
    """An agreement cell of the review table: `A of N (low–high%)`, or `-` where nothing was compared."""
    agreeing, compared = counts
    if not compared:
        return "-"
    low, high = wilson(agreeing, compared)
    return f"{agreeing} of {compared} ({low * 100:.0f}–{high:.0%})"


def _cell(text: str) -> str:
    """A name as one cell of the card's Markdown table: on one line, its `|` not a column's end."""
    return escaped(text).replace("|", "\\|")


def _describe(name: str, chosen_model: str | None, rejected_model: str | None) -> str:
    """A strategy's description; a model contrast between a model and a copy of it with layers removed says so,
    rather than calling the sides larger / higher-ranked."""
    description = STRATEGIES[name].description
    chosen, rejected = _local_spec(chosen_model), _local_spec(rejected_model)
    if STRATEGIES[name].kind == "model" and chosen and rejected and chosen.source == rejected.source:
        weaker = {"nparam": "smaller", "leaderboard": "lower-ranked"}.get(name, "weaker")
        return (
            f"Here the chosen side is `{chosen}` and the rejected side is a copy of it with a middle block of layers "
            f"removed (keeping {rejected.layers}), not a separately trained {weaker} model: this config shows the "
            "mechanics of a model contrast."
        )
    return description


def _local_spec(model: str | None) -> ModelSpec | None:
    """The local model spec a recorded model name stands for, or None (an endpoint's served name, say)."""
    try:
        return ModelSpec.parse(model) if model else None
    except ConfigError:
        return None


def card_details(manifest: Manifest) -> Card:
    """The card settings a manifest records (an older manifest's: the defaults)."""
    return Card(license=manifest.license, **manifest.card)


def render_license(manifest: Manifest) -> str | None:
    """`LICENSE.md`, which the card's `license_link` names when the license is `other` and no URL was given: the
    generated text follows the terms of the models that wrote it."""
    details = card_details(manifest)
    if manifest.license != DEFAULT_LICENSE or details.license_link != LICENSE_FILE:
        return None
    models = "".join(f"- `{name}`: {manifest.model_notes.get(name, 'served by an endpoint')}\n"
                     for name in dict.fromkeys(manifest.roles.values()))  # fmt: skip
    return (
        f"# License: {details.license_name}\n\n"
        "No license was chosen for this dataset (`popalign build --license ID` states one). Its answers were "
        "generated by these models and follow their terms of use:\n\n"
        f"{models}\nIts instructions come from {manifest.prompts['source']}, under that source's terms. popalign, "
        "which made the pairs, is Apache-2.0; that license does not extend to the generated text.\n"
    )


def card_files(manifest: Manifest, *, repo_id: str, versions: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """The card (`README.md`) and, where its license names one, `LICENSE.md`, by file name."""
    files = {CARD: render_card(manifest, repo_id=repo_id, versions=versions)}
    license_text = render_license(manifest)
    return files | ({LICENSE_FILE: license_text} if license_text else {})


def write_card_and_manifest(manifest: Manifest, folder: Path, out: Path) -> None:
    """The card, then the manifest (last: a folder with a manifest is complete) of the build bound for `out`, with
    the digest of every file the folder holds, and what readers' flags (carried over from `out`) say of its pairs;
    a copy with the flags applied keeps the review of the pairs it was made from."""
    manifest = replace(manifest, overview={key: path for key, path in OVERVIEW.items() if (folder / path).is_file()})
    if not (manifest.review and manifest.review.applied):
        carry_flags(out, folder)
        manifest = replace(manifest, review=review_record(folder, manifest.configs))
    for name, text in card_files(manifest, repo_id=_local_name(out)).items():
        (folder / name).write_text(text, encoding="utf-8")
    write_manifest(folder, replace(manifest, digests=file_digests(folder)))


def write_review(folder: Path, rows: Mapping[str, list[dict[str, Any]]] | None = None) -> Manifest:
    """The card and manifest of a build in place, with what its readers' flags say now (`popalign review` after each
    flag; `rows`: its configs' rows, where the caller holds them); the build's files are untouched, so their
    digests stand."""
    manifest = open_manifest(folder)
    manifest = replace(manifest, review=review_record(folder, manifest.configs, rows))
    for name, text in card_files(manifest, repo_id=_local_name(folder)).items():
        write_text(folder / name, text)
    write_manifest(folder, manifest)
    return manifest


def _local_name(out: Path) -> str:
    """How the card names a local build in its loading examples: the path from the working folder when the build
    lies under it, else the folder's name (never an absolute path, which the card would publish)."""
    relative = os.path.relpath(out.absolute())
    return out.name if relative.startswith("..") else relative
