"""The judge's verdict rules: the final choice is parsed robustly, a pair counts only when both orders agree,
and accuracy comes with a Wilson interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_offline
from popalign.generation import Generation
from popalign.judge import judge_run, parse_choice, summarize, verdict, wilson
from popalign.templates import TemplateSet
from test_build import load
from test_pairs import HERE, POPALIGN, build, manifest, scripted  # noqa: F401 (the fixture)


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


def test_a_judge_run_asks_both_orders() -> None:
    row = {"prompt": [{"content": "Say hi."}], "chosen": [{"content": "Hi!"}], "rejected": [{"content": "No."}]}
    run = judge_run(row, TemplateSet())
    first, second = next(run)
    assert first.messages[0][1].index("Hi!") < first.messages[0][1].index("No.")
    assert second.messages[0][1].index("No.") < second.messages[0][1].index("Hi!")
    with pytest.raises(StopIteration) as done:
        run.send([Generation("Clearer.\nA", 3), Generation("B", 1)])
    assert done.value.value == "chosen"


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
    assert summary.counts == {"chosen": 2, "rejected": 1, "tie": 1, "unparsed": 1}
    assert summary.accuracy == 0.5 and summary.interval == wilson(2, 4)
    assert summary.longer_wins == round(1 / 3, 4)  # only the first decided pair's winner is the longer answer
    assert summary.dlma_agreement == round(2 / 3, 4)


def test_popalign_judge_gives_exact_accuracies_from_a_scripted_judge(scripted, tmp_path: Path) -> None:  # noqa: F811
    url, _ = scripted
    result, out = build(tmp_path, url, "--strategies", "elicitive", tags=["ok", "judge-first", "judge-wrong",
                                                                          "judge-mute"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    judged = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--templates", HERE / "scripted_templates",
                         "--no-cache", "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    verdicts = {row["prompt"][0]["content"]: row["judge_verdict"] for row in load(out, "elicitive")}
    assert verdicts == {
        "Explain tides [ok].": "chosen", "Explain tides [judge-first].": "tie",
        "Explain tides [judge-wrong].": "rejected", "Explain tides [judge-mute].": "unparsed",
    }  # fmt: skip
    summary = manifest(out)["judge"]["configs"]["elicitive"]
    assert summary["counts"] == {"chosen": 1, "rejected": 1, "tie": 1, "unparsed": 1}
    assert summary["accuracy"] == round(1 / 3, 4)
    assert summary["interval"] == [round(bound, 4) for bound in wilson(1, 3)]
    card = (out / "README.md").read_text()
    assert "## Judged accuracy" in card and "| `elicitive` | 3 | 33.3% | " in card
    assert "![judged accuracy per strategy](quality/judge_accuracy.png)" in card
    assert (out / "quality" / "judge_accuracy.png").read_bytes().startswith(b"\x89PNG")
    # a judged folder is judged again: the newest verdicts replace the old, through the same atomic swap
    again = run_offline(POPALIGN, "judge", out, "--judge-model", url, "--templates", HERE / "scripted_templates",
                        "--no-cache", "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert manifest(out)["judge"]["configs"]["elicitive"]["counts"] == summary["counts"]
    not_a_build = run_offline(POPALIGN, "judge", tmp_path, "--judge-model", url)
    assert not_a_build.returncode == 2 and len(not_a_build.stderr.splitlines()) == 1
