"""DLMA self-reward scores: against a direct forward pass, and `popalign score` (served: test_served_logprobs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import POPALIGN, load, run_offline
from logprob_server import received, serve_logprobs
from popalign.backends.local import LocalBackend
from popalign.contrasts import StrategyContext
from popalign.dataset.quality import quality_report
from popalign.dataset.schema import make_row
from popalign.roles import ModelSpec
from popalign.scoring import LocalScorer, contrast_chats, curate, score_rows
from popalign.strategies import STRATEGIES
from popalign.styles import Styles
from popalign.templates import TemplateSet

# Direct and batched log-probs differ only by float32 summation order and padding: 1e-3 on scores of
# magnitude 1-100 (sums over ~50-token answers).
TOLERANCE = 1e-3

INSTRUCTION = "Give one tip for writing clear emails."
CHOSEN = "Put the main request in the first sentence, and keep each paragraph to one idea."
REJECTED = "emails are whatever, just write stuff and send it lol"


@pytest.fixture(scope="module")
def smollm2() -> tuple[LocalBackend, ModelSpec]:
    backend = LocalBackend(batch_size=4)
    backend.load(ModelSpec("smollm2"))
    return backend, ModelSpec("smollm2")


PLANS = {"chosen_reasoning": "- Lead with the request.", "rejected_reasoning": "- Ramble first."}


def rows_for(*strategies: str) -> list[dict]:
    return [
        make_row(strategy=name, prompt=[{"role": "user", "content": INSTRUCTION}], prompt_id="p", chosen=CHOSEN,
                 rejected=REJECTED, chosen_model="m", rejected_model="m", **(PLANS if name == "elicitive" else {}))
        for name in strategies
    ]  # fmt: skip


def count_tokens(backend: LocalBackend):
    tokenizer = backend.tokenizer("smollm2")
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def renderer(backend: LocalBackend):
    tokenizer = backend.tokenizer("smollm2")
    return lambda chat: tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)


def direct_logprob(backend: LocalBackend, prompt: str, response: str) -> float:
    """log p(response | prompt): prompt and response tokenized apart, one unpadded forward pass."""
    model, tokenizer = backend.load(ModelSpec("smollm2"))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids + response_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return logprobs.gather(1, torch.tensor(response_ids)[:, None]).sum().item()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["prefix", "elicitive", "refine"])
def test_score_equals_the_dlma_formula_on_a_direct_forward_pass(smollm2, strategy: str) -> None:
    backend, spec = smollm2
    context = StrategyContext(TemplateSet(), seed=0)
    render = renderer(backend)
    scorer, count = LocalScorer(backend, spec), count_tokens(backend)
    (score,), (per_token,), stats = score_rows(
        rows_for(strategy), scorer=scorer, render=render, context=context, count_tokens=count
    )
    assert stats.computed == 6  # four prompt+answer sequences and the two prompts
    positive, negative = (render(chat) for chat in contrast_chats(rows_for(strategy)[0], context, "prefix"))
    assert positive != negative
    gains = [direct_logprob(backend, positive, y) - direct_logprob(backend, negative, y) for y in (CHOSEN, REJECTED)]
    assert score == pytest.approx(gains[0] - gains[1], abs=TOLERANCE)
    expected = gains[0] / count(CHOSEN) - gains[1] / count(REJECTED)
    assert per_token == pytest.approx(expected, abs=TOLERANCE)
    swapped = rows_for(strategy)[0] | {"chosen": [{"role": "assistant", "content": REJECTED}],
                                       "rejected": [{"role": "assistant", "content": CHOSEN}]}  # fmt: skip
    (negated,), _, _ = score_rows([swapped], scorer=scorer, render=render, context=context, count_tokens=count)
    assert negated == pytest.approx(-score, abs=1e-9)


def test_contrast_prompts_come_from_the_strategy_or_the_configured_pair() -> None:
    context = StrategyContext(TemplateSet(), seed=0)
    own = {row["strategy"]: contrast_chats(row, context, "prefix") for row in rows_for(*STRATEGIES)}
    assert own["nparam"] == own["leaderboard"] == own["refine"] == own["prefix"]
    assert own["demon"] != own["prefix"] != own["elicitive"]
    assert contrast_chats(rows_for("refine")[0], context, "demon") == own["demon"]
    assert all(INSTRUCTION in chat[-1]["content"] for pair in own.values() for chat in pair)


def test_elicitive_is_scored_in_the_contexts_its_answers_were_written_in() -> None:
    context = StrategyContext(TemplateSet(), seed=0)
    positive, negative = contrast_chats(rows_for("elicitive")[0], context, "prefix")
    for chat, plan in ((positive, PLANS["chosen_reasoning"]), (negative, PLANS["rejected_reasoning"])):
        assert chat == [
            {"role": "system", "content": f"Guidelines for your answer:\n{plan}"},
            {"role": "user", "content": INSTRUCTION},
        ]
    paper = StrategyContext(TemplateSet(), seed=0, styles=Styles(elicitive="paper"))
    positive, negative = contrast_chats(rows_for("elicitive")[0], paper, "prefix")
    assert "principles a good response" in positive[0]["content"] and "a bad response" in negative[0]["content"]


def test_curriculum_order_ranks_by_per_token_score() -> None:
    from popalign.scoring import order_rows

    rows = [row | {"score": s, "score_per_token": t} for row, s, t in
            zip(rows_for("prefix", "prefix", "prefix"), [9.0, 1.0, 4.0], [0.1, 0.5, 0.3], strict=True)]  # fmt: skip
    assert [row["score"] for row in order_rows(rows, "curriculum")] == [1.0, 4.0, 9.0]


def test_the_quality_report_of_known_scores() -> None:
    rows = [{"score": score, "chosen": [{"content": "a" * n}], "rejected": [{"content": "bb"}]}
            for score, n in ((2.0, 4), (-1.0, 1), (0.5, 3), (0.0, 2))]  # fmt: skip
    report = quality_report(rows, {"identical": 1})
    assert report.to_dict() == {
        "rows": 4, "dropped": {"identical": 1}, "score_mean": 0.375, "score_median": 0.25, "score_min": -1.0,
        "score_max": 2.0, "agreement": 0.5, "chosen_chars_mean": 2.5, "rejected_chars_mean": 2.0, "chosen_longer": 0.5,
    }  # fmt: skip


def test_curation_swaps_drops_and_counts() -> None:
    scores = [2.0, -1.0, 0.5]
    rows = [row | {"score": score} for row, score in zip(rows_for("prefix", "demon", "refine"), scores, strict=True)]
    kept, counts = curate([dict(r) for r in rows], min_score=None, swap="keep")
    assert [r["score"] for r in kept] == [2.0, -1.0, 0.5] and not counts
    kept, counts = curate([dict(r) for r in rows], min_score=None, swap="drop")
    assert [r["strategy"] for r in kept] == ["prefix", "refine"] and counts == {"rejected-better": 1}
    kept, counts = curate([dict(r) for r in rows], min_score=0.8, swap="swap")
    assert [(r["strategy"], r["score"], r["swapped"]) for r in kept] == [("prefix", 2.0, False), ("demon", 1.0, True)]
    assert kept[1]["chosen"][0]["content"] == REJECTED and counts == {"swapped": 1, "low-score": 1}


@pytest.mark.slow
def test_popalign_score_rewrites_every_config_with_scores_and_a_report(
    embedded_build, popalign, tmp_path: Path
) -> None:
    source, _ = embedded_build
    out = tmp_path / "scored"
    shutil.copytree(source, out)
    flags = ["--cache-dir", tmp_path / "cache", "--swap", "swap", "--min-score", "0.5", "--order", "curriculum"]
    result = popalign("score", out, *flags)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "popalign_build.json").read_text())
    before = json.loads((source / "popalign_build.json").read_text())
    card = (out / "README.md").read_text()
    scorer = f"local:{ModelSpec('smollm2').identify().key}"  # the embedded model at its fingerprint
    assert scorer.startswith("local:smollm2@sha256:")
    assert manifest["score"] == {"scorer": scorer, "contrast": "prefix", "min_score": 0.5, "swap": "swap",
                                 "order": "curriculum"}  # fmt: skip
    plain = tmp_path / "plain"  # the same scores, not curated: the agreement is read off its rows
    shutil.copytree(source, plain)
    assert popalign("score", plain, "--cache-dir", tmp_path / "cache").returncode == 0
    plain_manifest = json.loads((plain / "popalign_build.json").read_text())
    for name, config in before["configs"].items():
        report = manifest["quality"][name]
        assert report["rows"] == config["rows"] > 0
        uncurated = [row["score"] for row in load(plain, name)]
        assert len(uncurated) == config["rows"]
        assert report["agreement"] == plain_manifest["quality"][name]["agreement"]
        assert 0 <= report["agreement"] <= 1  # its value on known scores: test_the_quality_report_of_known_scores
        rows = list(load(out, name))
        scores = [row["score"] for row in rows]
        per_token = [row["score_per_token"] for row in rows]
        assert per_token == sorted(per_token, reverse=True) and all(score >= 0.5 for score in scores)
        swapped = [row for row in rows if row["swapped"]]
        assert all(row["score"] > 0 for row in swapped)
        assert len(swapped) <= report["curation"].get("swapped", 0)
        low = report["curation"].get("low-score", 0)
        assert len(rows) == config["rows"] - low == manifest["configs"][name]["rows"]
        assert manifest["configs"][name]["dropped"].get("low-score", 0) == low
        assert report["histogram"] == f"quality/{name}_scores.png"
        with Image.open(out / report["histogram"]) as image:
            assert image.format == "PNG" and image.size[0] > 100
            image.verify()
        assert f"]({report['histogram']})" in card
    again = popalign("score", out, *flags)
    assert again.returncode == 0, again.stderr
    assert " 0 computed" in again.stdout


@pytest.mark.slow
def test_scoring_through_a_tgi_endpoint_keeps_the_token_out_of_everything(embedded_build, tmp_path: Path) -> None:
    source, _ = embedded_build
    out = tmp_path / "scored"
    shutil.copytree(source, out)
    secret = "hf_tgiSecretToken123"
    with serve_logprobs(tmp_path / "requests.jsonl", "tgi", token=secret) as url:
        # the endpoint is on loopback: the Hub stays offline (no model download), the client must not be
        refused = run_offline(
            POPALIGN, "score", out, "--score-model", url, "--token", "hf_wrong", "--no-cache", HF_HUB_OFFLINE="0"
        )
        result = run_offline(
            POPALIGN, "score", out, "--score-model", url, "--token", secret, "--no-cache", HF_HUB_OFFLINE="0"
        )
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"popalign: error: endpoint {url}: unauthorized (HTTP 401)")
    assert len(refused.stderr.strip().splitlines()) == 1 and "hf_wrong" not in refused.stderr
    assert result.returncode == 0, result.stderr
    scorer = json.loads((out / "popalign_build.json").read_text())["score"]["scorer"]
    assert scorer == "tgi:HuggingFaceTB/SmolLM2-135M-Instruct@v1"  # the served model at what TGI says of its weights
    requests = received(tmp_path / "requests.jsonl")
    posts = [request for request in requests if request["method"] == "POST"]
    assert posts and all(request["path"] == "/generate" for request in posts)
    for text in [result.stdout, result.stderr, *(p.read_text() for p in out.glob("*") if p.is_file())]:
        assert secret not in text


@pytest.mark.slow
def test_build_with_score_writes_scored_rows(tiny_roles, popalign, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = popalign(
        "build", "--limit", 3, "--strategies", "prefix,nparam", "--out", out, "--cache-dir", tmp_path / "cache",
        "--max-new-tokens", 8, *tiny_roles, "--no-progress", "--score", "--score-model", tiny_roles[1].split("=")[1],
        "--keep-truncated",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "scored " in result.stdout and " computed" in result.stdout
    manifest = json.loads((out / "popalign_build.json").read_text())
    assert set(manifest["quality"]) == {"prefix", "nparam"}
    for name in ("prefix", "nparam"):
        rows = load(out, name)
        assert len(rows) == manifest["configs"][name]["rows"] == manifest["quality"][name]["rows"] > 0
        assert all(isinstance(row["score"], float) for row in rows)
