"""The judge's verdict rules: the final choice is parsed robustly, a pair counts only when both orders agree,
and accuracy comes with a Wilson interval."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from helpers import HERE, POPALIGN, build, load, manifest, run_offline
from net import free_port
from popalign.generation import Generation
from popalign.judging import judge_chats, judge_run, parse_choice, summarize, verdict, wilson
from popalign.templates import TemplateSet


@pytest.mark.parametrize(
    ("text", "choice"),
    [("A", "A"), ("Response B is clearer.\nB", "B"), ("[[A]]", "A"), ("**B**", "B"), ("Answer: A.", "A"),
     ("Both are fine.", None), ("A or B", "B"), ("", None), ("BA", None)],
)  # fmt: skip
def test_the_final_choice_is_parsed(text: str, choice: str | None) -> None:
    assert parse_choice(text) == choice


def test_a_verdict_counts_only_when_both_orders_agree() -> None:
    assert verdict("A", "B") == "chosen" and verdict("B", "A") == "rejected"
    assert verdict("A", "A") == "tie" == verdict("B", "B")
    assert verdict(None, "B") == "unparsed" == verdict("A", None)


def test_a_judge_run_asks_both_orders_and_returns_each_choice() -> None:
    row = {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": [{"content": "Hi!"}],
        "rejected": [{"content": "No."}],
    }
    run = judge_run(row, TemplateSet())
    first, second = next(run)
    assert first.messages[0][1].index("Hi!") < first.messages[0][1].index("No.")
    assert second.messages[0][1].index("No.") < second.messages[0][1].index("Hi!")
    with pytest.raises(StopIteration) as done:
        run.send([Generation("Clearer.\nA", 3), Generation("B", 1)])
    assert done.value.value == ("A", "B")


def test_wilson_interval_matches_a_direct_computation() -> None:
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson(0, 0) == (0.0, 1.0)


def test_summary_counts_accuracy_length_bias_and_dlma_agreement() -> None:
    def row(verdict: str, chosen: str, rejected: str, score: float | None = None) -> dict:
        return {"judge_verdict": verdict, "chosen": [{"content": chosen}], "rejected": [{"content": rejected}],
                "score": score}  # fmt: skip

    rows = [row("chosen", "long answer", "short", 1.0), row("chosen", "x", "longer", -2.0),
            row("rejected", "longer one", "y", -1.0), row("tie", "a", "b"), row("unparsed", "a", "b")]  # fmt: skip
    summary = summarize(rows)
    assert summary.counts == {"chosen": 2, "rejected": 1, "tie": 1, "unparsed": 1, "failed": 0}
    assert summary.accuracy == 0.5 and summary.interval == wilson(2, 4)
    assert summary.longer_wins == round(1 / 3, 4)  # only the first decided pair's winner is the longer answer
    assert summary.dlma_agreement == round(2 / 3, 4)


JUDGE_TAGS = ["ok", "judge-first", "judge-wrong", "judge-mute", "judge-refused"]


@pytest.mark.slow
def test_popalign_judge_gives_exact_accuracies_from_a_scripted_judge(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive", tags=JUDGE_TAGS)
    assert result.returncode == 0, result.stderr
    judged = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--templates", HERE / "scripted_templates",
                         "--no-cache", "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    verdicts = {row["prompt"][0]["content"]: row["judge_verdict"] for row in load(out, "elicitive")}
    assert verdicts == {
        "Explain tides [ok].": "chosen", "Explain tides [judge-first].": "tie",
        "Explain tides [judge-wrong].": "rejected", "Explain tides [judge-mute].": "unparsed",
        "Explain tides [judge-refused].": None,
    }  # fmt: skip
    summary = manifest(out)["judge"]["configs"]["elicitive"]
    assert summary["counts"] == {"chosen": 1, "rejected": 1, "tie": 1, "unparsed": 1, "failed": 1}
    assert "1 pairs not judged" in judged.stdout
    assert summary["accuracy"] == round(1 / 3, 4)
    assert summary["interval"] == [round(bound, 4) for bound in wilson(1, 3)]
    card = (out / "README.md").read_text()
    assert "## Judged accuracy" in card and "| `elicitive` | 3 | 33.3% | " in card
    assert "1 pairs were not judged" in card
    assert "![judged accuracy per strategy](quality/judge_accuracy.png)" in card
    assert (out / "quality" / "judge_accuracy.png").read_bytes().startswith(b"\x89PNG")
    # a judged folder is judged again: the newest verdicts replace the old, through the same atomic swap
    again = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--templates", HERE / "scripted_templates",
                        "--no-cache", "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert manifest(out)["judge"]["configs"]["elicitive"]["counts"] == summary["counts"]
    not_a_build = run_offline(POPALIGN, "judge", tmp_path, "--judge-model", url)
    assert not_a_build.returncode == 2 and len(not_a_build.stderr.splitlines()) == 1
    assert "replaced" not in manifest(out)["judge"]  # the same judge again replaces nobody else's verdicts


@pytest.mark.slow
def test_scoring_a_judged_build_keeps_its_verdicts_on_their_sides(scripted, tiny_model_dir, tmp_path) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive", "--judge-model", url, tags=JUDGE_TAGS)
    assert result.returncode == 0, result.stderr
    before = {row["prompt_id"]: row["judge_verdict"] for row in load(out, "elicitive")}
    scored = run_offline(POPALIGN, "score", out, "--score-model", tiny_model_dir, "--swap", "swap", "--templates",
                         HERE / "scripted_templates", "--no-cache")  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    rows = load(out, "elicitive")
    flipped = {"chosen": "rejected", "rejected": "chosen"}
    assert any(row["swapped"] for row in rows)
    for row in rows:
        verdict = before[row["prompt_id"]]
        assert row["judge_verdict"] == (flipped.get(verdict, verdict) if row["swapped"] else verdict)
    judge = manifest(out)["judge"]["configs"]["elicitive"]
    assert 0 <= judge["dlma_agreement"] <= 1  # its value on known rows: test_summary_counts_accuracy_length_bias_...
    assert (out / "quality" / "judge_accuracy.png").is_file() and (out / "quality" / "elicitive_scores.png").is_file()


@functools.cache
def reward_model(folder: Path) -> tuple:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder).eval()


def direct_reward(folder: Path, chat: list[dict]) -> float:
    """A reward computed as TRL's reward modelling does, one unpadded text at a time: the first logit over the
    chat template of the prompt and the answer."""
    import torch

    tokenizer, model = reward_model(folder)
    ids = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        return float(model(**ids).logits[0, 0])


@pytest.mark.slow
def test_a_reward_model_judges_as_a_direct_computation_does(scripted, tiny_reward_model_dir, tmp_path) -> None:
    url, _ = scripted
    tags = ["ok", "judge-first", "judge-wrong", "judge-mute", "tide-two", "tide-three"]
    result, out = build(tmp_path, url, "--strategies", "elicitive,prefix", "--keep-truncated", tags=tags)
    assert result.returncode == 0, result.stderr
    llm = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--no-progress", HF_HUB_OFFLINE="0")
    assert llm.returncode == 0, llm.stderr
    judged = run_offline(POPALIGN, "judge", out, "--judge-reward-model", tiny_reward_model_dir, "--batch-size", "3",
                         "--no-progress")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    summary = manifest(out)["judge"]
    assert summary["kind"] == "reward-model" and summary["model"] == tiny_reward_model_dir.name
    for name in ("elicitive", "prefix"):
        rows = load(out, name)
        assert len(rows) >= 3
        margins = [
            direct_reward(tiny_reward_model_dir, row["prompt"] + row["chosen"])
            - direct_reward(tiny_reward_model_dir, row["prompt"] + row["rejected"])
            for row in rows
        ]
        assert [row["judge_margin"] for row in rows] == pytest.approx(margins, abs=1e-4)
        assert [row["judge_verdict"] for row in rows] == ["chosen" if m > 0 else "rejected" for m in margins]
        wins = sum(margin > 0 for margin in margins)
        assert summary["configs"][name]["accuracy"] == round(wins / len(rows), 4)
        assert summary["configs"][name]["counts"]["tie"] == summary["configs"][name]["counts"]["unparsed"] == 0
    card = (out / "README.md").read_text()
    assert f"the reward model\n`{tiny_reward_model_dir.name}`" in card
    # keeping only the pairs the judge agrees with, after another judge: the card names the one replaced
    kept = run_offline(POPALIGN, "judge", out, "--judge-reward-model", tiny_reward_model_dir, "--min-judge", "agree",
                       "--no-progress")  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    after = manifest(out)
    for name in ("elicitive", "prefix"):
        counts = summary["configs"][name]["counts"]
        assert after["configs"][name]["rows"] == counts["chosen"]
        assert after["configs"][name]["dropped"].get("judge-disagrees", 0) == counts["rejected"]
        if counts["chosen"]:  # a config the judge disagrees with throughout has no rows left
            assert all(row["judge_verdict"] == "chosen" for row in load(out, name))
    assert summary["replaced"] == after["judge"]["replaced"] == ["scripted-default"]
    assert "These verdicts replace\nthose of `scripted-default`" in (out / "README.md").read_text()
    assert "--min-judge agree" in (out / "README.md").read_text()


@pytest.mark.slow
def test_a_judge_that_cannot_load_is_one_line(scripted, tiny_model_dir, tiny_reward_model_dir, tmp_path) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive", tags=["ok"])
    assert result.returncode == 0, result.stderr
    before = (out / "popalign_build.json").read_bytes()
    corrupt = tmp_path / "corrupt-reward-model"
    shutil.copytree(tiny_reward_model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    for flags, says, offline in (
        (["--judge-reward-model", tmp_path / "nothing-here"], "reward model", "1"),
        (["--judge-reward-model", out], "reward model", "1"),
        (["--judge-reward-model", tiny_model_dir], "its weights have no trained score head (score.weight", "1"),
        (["--judge-reward-model", corrupt], f"reward model '{corrupt}': cannot load (Error while deserializing", "1"),
        (["--judge-model", f"http://127.0.0.1:{free_port()}"], "unreachable", "0"),
    ):
        refused = run_offline(POPALIGN, "judge", out, *flags, "--no-progress", HF_HUB_OFFLINE=offline)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert says in refused.stderr
    refusing = build(tmp_path, url, "--strategies", "elicitive", tags=["judge-refused"], out="refused")[1]
    refused = run_offline(POPALIGN, "judge", refusing, "--judge-model", url, "--no-progress", HF_HUB_OFFLINE="0")
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "every request failed (1 × endpoint http://127.0.0.1:" in refused.stderr  # the refusals by count
    assert "this judge refuses" in refused.stderr
    assert "judge" not in json.loads((refusing / "popalign_build.json").read_text())
    both = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--judge-reward-model", tiny_model_dir)
    assert both.returncode == 2 and "or a reward model (judge_reward_model): give one" in both.stderr
    assert (out / "popalign_build.json").read_bytes() == before


@pytest.mark.slow
def test_build_judges_and_keeps_only_agreed_pairs(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive", "--judge-model", url, "--min-judge", "agree",
                        "--shard", "1/1", tags=JUDGE_TAGS)  # fmt: skip
    assert result.returncode == 0, result.stderr
    built = manifest(out)
    assert built["judge"]["configs"]["elicitive"]["counts"] == {
        "chosen": 1, "rejected": 1, "tie": 1, "unparsed": 1, "failed": 1,
    }  # fmt: skip
    assert built["configs"]["elicitive"]["rows"] == 1
    assert built["configs"]["elicitive"]["dropped"] == {"judge-disagrees": 3, "judge-failed": 1}
    assert [row["prompt"][0]["content"] for row in load(out, "elicitive")] == ["Explain tides [ok]."]
    assert "--min-judge agree: kept 1 pairs" in result.stdout
    merged = run_offline(POPALIGN, "merge", out, "--out", tmp_path / "merged")  # judged parts: merge, then judge
    assert merged.returncode == 2 and "this part is judged" in merged.stderr and not (tmp_path / "merged").exists()
    no_judge = run_offline(POPALIGN, "build", "--min-judge", "agree", "--out", tmp_path / "x")
    assert no_judge.returncode == 2 and "a judge is an LLM (judge_model) or a reward model" in no_judge.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_local_judge_that_names_no_choice_is_read_from_its_logprobs(scripted, tiny_model_dir, tmp_path) -> None:
    """The tiny random model never ends a reply with A or B; each order's choice is the likelier next token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive", "--keep-truncated", tags=["ok", "tide-two"])
    assert result.returncode == 0, result.stderr
    judged = run_offline(POPALIGN, "judge", out, "--judge-model", tiny_model_dir, "--judge-max-new-tokens", "4",
                         "--no-cache", "--no-progress")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    a, b = (tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in "AB")
    assert len(a) == len(b) == 1

    def choice(chat: list[dict]) -> str:
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        with torch.inference_mode():
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            logits = model(**ids).logits[0, -1]
        return "A" if logits[a[0]] > logits[b[0]] else "B"

    rows = load(out, "elicitive")
    expected = [verdict(*(choice(chat) for chat in judge_chats(row, TemplateSet()))) for row in rows]
    assert [row["judge_verdict"] for row in rows] == expected
    record = manifest(out)["judge"]
    assert record["from_logprobs"] == record["judgements"] == 2 * len(rows)
