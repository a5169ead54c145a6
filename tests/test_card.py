"""The card's metadata as the Hub's card spec asks: `license: other` with its `license_name` and a `license_link`
to the LICENSE.md the build writes (naming the generating models), or a chosen license without them; the
languages and title as options, recorded; `annotations_creators`; and `source_datasets` for Hub prompts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import popalign
from helpers import build, card_metadata, manifest
from popalign.dataset.card import render_card
from popalign.dataset.folder import open_manifest
from popalign.errors import ConfigError
from popalign.recipe import load_recipe


@pytest.mark.slow
def test_an_unchosen_license_names_its_terms_and_links_them(scripted, tmp_path: Path) -> None:
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix", "--language", "en,fr", "--pretty-name",
                        "Tides pairs", tags=["ok", "aaa"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    card = card_metadata(out)
    assert (card["license"], card["license_name"], card["license_link"]) == (
        "other", "generating-models-terms", "LICENSE.md"
    )  # fmt: skip
    assert (card["language"], card["pretty_name"], card["annotations_creators"]) == (
        ["en", "fr"], "Tides pairs", ["machine-generated"]
    )  # fmt: skip
    assert "source_datasets" not in card  # a local prompts file
    assert (out / "README.md").read_text().split("---", 2)[2].lstrip().startswith("# Tides pairs")
    license_text = (out / "LICENSE.md").read_text()
    assert "`scripted-default`" in license_text and "prompts.jsonl" in license_text
    assert manifest(out)["card"] == {"license_name": "generating-models-terms", "license_link": "LICENSE.md",
                                     "language": "en,fr", "pretty_name": "Tides pairs"}  # fmt: skip
    saved = load_recipe(out / "popalign_recipe.yaml")
    assert (saved.settings["language"], saved.settings["pretty_name"]) == ("en,fr", "Tides pairs")

    # a Hub dataset as the prompts is the card's source dataset
    hub = replace(open_manifest(out), prompts={"source": "org/prompts:train", "revision": "abc", "count": 2})
    metadata = yaml.safe_load(render_card(hub, repo_id="org/d").split("---")[1])
    assert metadata["source_datasets"] == ["org/prompts"]


@pytest.mark.slow
def test_a_chosen_license_has_no_name_link_or_file(scripted, tmp_path: Path) -> None:
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix", "--license", "cc-by-4.0", tags=["ok"])
    assert result.returncode == 0, result.stderr
    card = card_metadata(out)
    assert card["license"] == "cc-by-4.0" and "license_name" not in card and "license_link" not in card
    assert not (out / "LICENSE.md").exists()
    refused, _ = build(tmp_path, scripted[0], "--license", "mit", "--license-name", "mine", tags=["ok"], out="x")
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == (
        "popalign: error: license_name and license_link are for license other, not mit"
    )
    with pytest.raises(ConfigError, match="language: expected language codes"):
        popalign.build(language="English")
