"""Pair assembly end to end against a scripted endpoint: every drop reason happens a known number of times, the
planner role writes the plans on its own endpoint, the paper's template set parses `Thought:` / `Response:`, and
the `all` config holds every strategy's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import build, card_metadata, load, manifest, requests

#: What the scripted server makes of each tag in the guided elicitive flow.
ELICITIVE_DROPS = {"truncated": 2, "empty": 2, "plan-is-answer": 1, "near-copy": 1, "identical": 1, "failed": 1}


@pytest.mark.slow
def test_every_drop_reason_is_counted_exactly(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive")
    assert result.returncode == 0, result.stderr
    config = manifest(out)["configs"]["elicitive"]
    assert config["rows"] == 1 and config["dropped"] == ELICITIVE_DROPS
    assert config["truncation"] == {"pairs": 9, "cut": 2, "rate": round(2 / 9, 4)}
    (row,) = load(out, "elicitive")
    assert row["chosen"][0]["content"] == "A careful, complete answer about ok."
    assert row["rejected"][0]["content"] == "A vague answer about ok."
    assert row["chosen_reasoning"] == "- Be exact and complete about ok."
    assert row["rejected_reasoning"] == "- Be vague and skip steps about ok."
    for reason, count in ELICITIVE_DROPS.items():
        assert f"{count} {reason}" in result.stdout
    card = (out / "README.md").read_text()
    for reason in ELICITIVE_DROPS:
        assert f"- `{reason}`: " in card
    assert "2 of 9 pairs (22%)" in card and "dropped as `truncated`, so no written answer is cut" in card
    assert "Demo-grade" not in card  # an endpoint's model, not the embedded demo


@pytest.mark.slow
def test_keep_truncated_keeps_and_counts_cut_pairs(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive", "--keep-truncated")
    assert result.returncode == 0, result.stderr
    config = manifest(out)["configs"]["elicitive"]
    assert config["rows"] == 3 and "truncated" not in config["dropped"]
    assert config["truncation"] == {"pairs": 9, "cut": 2, "rate": round(2 / 9, 4)}
    rejected = {row["rejected"][0]["content"] for row in load(out, "elicitive")}
    assert "A weak answer that stops in the mid" in rejected
    assert "they were **kept** (`--keep-truncated`)" in (out / "README.md").read_text()


@pytest.mark.slow
def test_guided_elicitive_gives_the_plan_as_guidance_in_a_fresh_context(scripted, planner, tmp_path: Path) -> None:
    (url, answers_log), (planner_url, plans_log) = scripted, planner
    result, out = build(tmp_path, url, "--strategies", "elicitive", "--model", f"planner={planner_url}", tags=["ok"])
    assert result.returncode == 0, result.stderr
    assert manifest(out)["roles"] == {"default": "scripted-default", "planner": "scripted-planner"}
    plans = requests(plans_log)
    assert sorted(chat[-1]["content"].split()[0] for chat in plans) == ["Explain", "PLAN-BAD", "PLAN-GOOD"]
    assert all(len(chat) == 1 and chat[0]["role"] == "user" for chat in plans)  # plain M(q) checks the plans
    answers = requests(answers_log)
    assert len(answers) == 2
    for chat in answers:  # guidance as a system message, then the plain instruction; never an assistant turn
        assert [m["role"] for m in chat] == ["system", "user"]
        assert chat[0]["content"].startswith("GUIDE - Be ") and chat[1]["content"] == "Explain tides [ok]."
    (row,) = load(out, "elicitive")
    assert row["chosen_model"] == row["rejected_model"] == "scripted-default"


@pytest.mark.slow
def test_paper_template_set_parses_thought_and_response(scripted, tmp_path: Path) -> None:
    url, log = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive", "--elicitive-style", "paper",
                        tags=["ok", "unparsed"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = manifest(out)
    assert config["elicitive_style"] == "paper" and config["configs"]["elicitive"]["dropped"] == {"unparsed": 1}
    (row,) = load(out, "elicitive")
    assert (row["chosen"][0]["content"], row["chosen_reasoning"]) == (
        "A full answer about ok.",
        "State the facts in order.",
    )
    assert (row["rejected"][0]["content"], row["rejected_reasoning"]) == (
        "A thin answer about ok.",
        "Leave out what matters.",
    )
    assert all(len(chat) == 1 and chat[0]["content"].startswith("PAPER-") for chat in requests(log))
    assert "Elicitive style: `paper`" in (out / "README.md").read_text()


def test_shipped_paper_templates_ask_for_thought_then_response() -> None:
    from popalign.templates import TemplateSet

    for side in ("good", "bad"):
        text = TemplateSet().render(f"elicitive_paper_{side}.jinja", instruction="{{ 7*7 }}")
        assert f"the principles a {side} response to it follows, then write that response" in text  # one turn
        assert text.index("Thought:") < text.index("Response:") and "{{ 7*7 }}" in text


@pytest.mark.slow
def test_all_config_is_the_default_and_holds_every_strategy(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "prefix,demon,elicitive", tags=["ok"])
    assert result.returncode == 0, result.stderr
    configs = card_metadata(out)["configs"]
    assert [c["config_name"] for c in configs] == ["all", "prefix", "demon", "elicitive"]
    assert [c["config_name"] for c in configs if c.get("default")] == ["all"]
    everything = load(out, "all")
    assert sorted(everything["strategy"]) == ["demon", "elicitive", "prefix"]
    for name in ("prefix", "demon", "elicitive"):
        (row,) = load(out, name)
        assert row in list(everything)
    from datasets import load_dataset

    default = load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache-default"))
    assert sorted(default["strategy"]) == sorted(everything["strategy"])
    info = {entry["config_name"]: entry for entry in card_metadata(out)["dataset_info"]}
    assert info["all"]["splits"][0]["num_examples"] == 3
