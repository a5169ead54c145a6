"""Render the dataset card (README.md) of a built folder: YAML `configs:` for `load_dataset`, then the body."""

from __future__ import annotations

from typing import Any

import datasets
import transformers
from huggingface_hub import DatasetCard, DatasetCardData

import popalign
from popalign.resources import shipped_dir
from popalign.strategies import STRATEGIES

CARD_TEMPLATE = "README.md.jinja"


def size_category(rows: int) -> str:
    """The Hub's size bucket for a row count."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "n>1M"


def render_card(manifest: dict[str, Any], *, repo_id: str, versions: list[dict[str, Any]] | None = None) -> str:
    """The README.md of a built folder, from its manifest (see `pipeline.build_dataset`); `repo_id` is what
    the card tells users to load (the folder, or the Hub repository it is published to), `versions` the
    published versions, oldest first (see `publish.push_dataset`)."""
    built = {name: config for name, config in manifest["configs"].items() if config["rows"]}
    default = "elicitive" if "elicitive" in built else next(iter(built))
    card_data = DatasetCardData(
        language="en",
        license="apache-2.0",
        task_categories=["text-generation"],
        tags=["dpo", "preference", "synthetic", "popalign", "trl"],
        pretty_name="PopAlign contrastive preference pairs",
        size_categories=size_category(sum(c["rows"] for c in built.values())),
        configs=[
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": f"data/{name}/train-*"}],
                **({"default": True} if name == default else {}),
            }
            for name in built
        ],
        dataset_info=[{"config_name": name, **c["dataset_info"]} for name, c in built.items()],
    )
    configs = [
        {
            "name": name,
            "kind": STRATEGIES[name].kind,
            "chosen": STRATEGIES[name].chosen,
            "rejected": STRATEGIES[name].rejected,
            "description": STRATEGIES[name].description,
            "chosen_model": c.get("chosen_model") or manifest["roles"][STRATEGIES[name].chosen_role],
            "rejected_model": c.get("rejected_model") or manifest["roles"][STRATEGIES[name].rejected_role],
            "rows": c["rows"] or "0 (no config: every pair dropped)",
            "dropped_text": ", ".join(f"{n} {reason}" for reason, n in c["dropped"].items()) or "0",
            "chosen_chars": c.get("chosen_chars", "–"),
            "rejected_chars": c.get("rejected_chars", "–"),
            "changed_in": c.get("changed_in"),
            "example": c.get("example"),
        }
        for name, c in manifest["configs"].items()
    ]
    card = DatasetCard.from_template(
        card_data,
        template_path=str(shipped_dir("dataset_cards") / CARD_TEMPLATE),
        repo_id=repo_id,
        default_config=default,
        configs=configs,
        prompts=manifest["prompts"],
        backend=manifest["backend"],
        roles=manifest["roles"],
        role_params=manifest.get("role_params", {}),
        versions=list(reversed(versions or [])),
        kept=sorted(
            name
            for name, c in manifest["configs"].items()
            if versions and c.get("changed_in") != versions[-1]["version"]
        ),
        latest=(versions or [{}])[-1].get("version"),
        model_notes=manifest["model_notes"],
        params=manifest["params"],
        template_hashes=manifest["template_hashes"],
        score=manifest.get("score"),
        quality=manifest.get("quality", {}),
        popalign_version=popalign.__version__,
        datasets_version=datasets.__version__,
        transformers_version=transformers.__version__,
    )
    return str(card)
