"""`refine` by CLAIR's minimal revision (`--refine-style clair`): the reviser revises the first answer in a fresh
chat, and the card reports each config's edit similarity and length ratio, computed per pair."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from rapidfuzz.distance import Levenshtein

from helpers import build, manifest, requests
from popalign.contrasts import StrategyContext
from popalign.dataset.card import render_card
from popalign.dataset.folder import open_manifest
from popalign.dataset.rows import RowSpool
from popalign.dataset.schema import make_row
from popalign.generation import Generation
from popalign.prompts import Instruction
from popalign.strategies import STRATEGIES, Pair
from popalign.styles import Styles
from popalign.templates import TemplateSet

DRAFT = "Blue is a colour. It is the colour of the sky, and also sometimes of the sea."
REVISED = "Blue is a colour. It is the colour of the sky and, often, of the sea."


def test_clair_asks_the_reviser_for_a_minimal_revision_in_a_fresh_chat() -> None:
    context = StrategyContext(TemplateSet(), styles=Styles(refine="clair"))
    run = STRATEGIES["refine"].run(Instruction.from_text("Name a colour {{ 1+1 }}."), context)
    (first,) = next(run)
    assert (first.role, first.messages) == ("default", (("user", "Name a colour {{ 1+1 }}."),))
    (revise,) = run.send([Generation(DRAFT, 20)])
    assert revise.role == "reviser" and len(revise.messages) == 1 and revise.messages[0][0] == "user"
    text = revise.messages[0][1]
    assert "as little as you can" in text and "Name a colour {{ 1+1 }}." in text and text.endswith(DRAFT)
    with pytest.raises(StopIteration) as done:
        run.send([Generation(REVISED, 18)])
    assert done.value.value == Pair(REVISED, DRAFT, "reviser", "default")
    assert "reviser" in STRATEGIES["refine"].helper_roles


def test_the_edits_of_each_pair_are_summarised_exactly(tmp_path: Path) -> None:
    pairs = [("abcd", "abcf"), ("abcdefgh", "abcd"), (REVISED, DRAFT)]
    rows = [make_row(strategy="refine", prompt=[{"role": "user", "content": f"q{i}"}], prompt_id=str(i), chosen=c,
                     rejected=r, chosen_model="m", rejected_model="m") for i, (c, r) in enumerate(pairs)]  # fmt: skip
    edits = RowSpool.of(rows, tmp_path / "rows.jsonl").describe()["edits"]
    similarity = sorted(Levenshtein.normalized_similarity(c, r) for c, r in pairs)
    ratios = sorted(len(c) / len(r) for c, r in pairs)
    assert similarity[0] == 0.5 and ratios[-1] == 2.0  # "abcdefgh" vs "abcd": 4 edits over 8 characters
    assert edits == {
        "similarity_median": round(similarity[1], 3),
        "length_ratio_median": round(ratios[1], 2),
        "length_ratio_max": 2.0,
        "over_half_longer": round(1 / 3, 3),
    }


@pytest.mark.slow
def test_a_clair_build_records_the_style_the_reviser_and_the_edits(scripted, tmp_path: Path) -> None:
    url, log = scripted
    result, out = build(tmp_path, url, "--strategies", "refine", "--refine-style", "clair", tags=["ok", "tide-two"])
    assert result.returncode == 0, result.stderr
    revisions = [chat for chat in requests(log) if "as little as you can" in chat[0]["content"]]
    assert len(revisions) == 2 and all(len(chat) == 1 for chat in revisions)
    recorded = manifest(out)
    assert recorded["refine_style"] == "clair" and recorded["roles"]["reviser"] == "scripted-default"
    assert set(recorded["configs"]["refine"]["edits"]) == {"similarity_median", "length_ratio_median",
                                                           "length_ratio_max", "over_half_longer"}  # fmt: skip
    card = (out / "README.md").read_text()
    assert "Refine style: `clair` (CLAIR's minimal revision" in card and "M_reviser(revise ⊕ q ⊕ r−)" in card
    edits = recorded["configs"]["refine"]["edits"]
    assert f"| `refine` | {edits['similarity_median']:.3f} | {edits['length_ratio_median']:.2f} |" in card
    assert "refine_style: clair" in (out / "popalign_recipe.yaml").read_text()
    # with a model contrast beside refine, the card says whether they shared the plain answer M(q)
    built = open_manifest(out)
    both = replace(built, configs={**built.configs, "nparam": built.configs["refine"]})
    assert "each\nmodel and pipeline strategy drew its own plain answer" in render_card(both, repo_id="org/d")
    shared = replace(both, styles={**both.styles, "share_answers": True})
    assert "shared one draw of the plain answer M(q)\n(`--share-answers`)" in render_card(shared, repo_id="org/d")
