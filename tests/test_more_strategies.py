"""The three contrasts beyond the paper's, end to end against the scripted server, whose answers are fixed by
each draw's seed and temperature and whose ratings are fixed by the answer: bestofn pairs exactly the best- and
the worst-rated of N samples (greedy, short ratings; `unrated` and `tied` counted), temperature pairs the low-
against the high-temperature sample, and teacher the teacher's answer against the policy's."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import POPALIGN, load, manifest, run_offline, serve_scripted


def _prompts(folder: Path, texts: list[str]) -> Path:
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in texts))
    return path


def _build(folder: Path, *flags: str | Path, texts: list[str]):
    result = run_offline(
        POPALIGN, "build", "--prompts", _prompts(folder, texts), "--out", folder / "d", "--no-cache", "--no-progress",
        *flags, HF_HUB_OFFLINE="0",
    )  # fmt: skip
    return result, folder / "d"


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


SAMPLED = [f"Explain topic {n} [sampled]." for n in range(4)]


@pytest.mark.slow
def test_bestofn_pairs_the_best_and_the_worst_rated_of_n_samples(scripted, tmp_path: Path) -> None:
    url, log = scripted
    texts = [*SAMPLED, "Explain rain [unrated].", "Explain snow [tied]."]
    result, out = _build(tmp_path, "--strategies", "bestofn", "--best-of", "5", "--model", f"default={url}",
                         texts=texts)  # fmt: skip
    assert result.returncode == 0, result.stderr
    entries = _log(log)
    ratings = [e for e in entries if e["messages"][-1]["content"].startswith("Rate the response")]
    samples = [e for e in entries if e not in ratings]
    assert len(samples) == 5 * 6 and len(ratings) == 5 * 6  # N answers and N ratings per instruction
    assert {(e["temperature"], e["max_tokens"]) for e in ratings} == {(0.0, 16)}  # rated greedily, short
    assert {e["temperature"] for e in samples} == {0.7}  # sampled at the run's temperature
    record = manifest(out)["configs"]["bestofn"]
    assert record["rows"] == 4 and record["dropped"] == {"unrated": 1, "tied": 1}
    for row in load(out, "bestofn"):
        answers = [e["answer"] for e in samples if e["messages"][0]["content"] == row["prompt"][0]["content"]]
        score = {a: int(a.split()[2]) % 10 + 1 for a in answers}  # as the scripted ranker rates "Answer number K"
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert len(answers) == 5 and {chosen, rejected} <= set(answers)
        assert (score[chosen], score[rejected]) == (max(score.values()), min(score.values()))
        assert score[chosen] > score[rejected]


@pytest.mark.slow
def test_temperature_pairs_the_low_against_the_high_temperature_sample(scripted, tmp_path: Path) -> None:
    url, log = scripted
    flags = ("--strategies", "temperature", "--low-temperature", "0.2", "--high-temperature", "1.5")
    result, out = _build(tmp_path, *flags, "--model", f"default={url}", texts=SAMPLED)
    assert result.returncode == 0, result.stderr
    rows = load(out, "temperature")
    assert len(rows) == 4
    assert all("at temperature 0.2 " in r["chosen"][0]["content"] for r in rows)
    assert all("at temperature 1.5 " in r["rejected"][0]["content"] for r in rows)
    assert sorted(e["temperature"] for e in _log(log)) == [0.2] * 4 + [1.5] * 4
    assert manifest(out)["low_temperature"] == 0.2  # recorded, as every style is


@pytest.mark.slow
def test_temperature_refuses_a_low_side_that_is_not_lower(popalign, tmp_path: Path) -> None:
    refused = popalign("build", "--strategies", "temperature", "--low-temperature", "1", "--high-temperature", "1",
                       "--out", tmp_path / "d")  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.strip().splitlines()[-1].endswith(
        "low_temperature 1.0 must be below high_temperature 1.0"
    )


@pytest.mark.slow
def test_teacher_pairs_the_teachers_answer_against_the_policys(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    with contextmanager(serve_scripted)(tmp_path, "scripted-teacher") as (teacher, _):
        flags = ("--strategies", "teacher", "--model", f"default={url}", "--model", f"teacher={teacher}")
        result, out = _build(tmp_path, *flags, texts=SAMPLED[:2])
    assert result.returncode == 0, result.stderr
    rows = load(out, "teacher")
    assert set(rows["chosen_model"]) == {"scripted-teacher"} and set(rows["rejected_model"]) == {"scripted-default"}
    assert manifest(out)["roles"] == {"default": "scripted-default", "teacher": "scripted-teacher"}


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ("--strategies", "teacher"),
            "strategy 'teacher' needs model roles teacher, default: pass --model teacher=SPEC",
        ),
        (
            ("--strategies", "teacher", "--model", "teacher=smollm2"),
            "strategy 'teacher' contrasts roles teacher and "
            "default, but both are smollm2: give them different models or generation parameters",
        ),
        (("--strategies", "bestofn", "--best-of", "1"), "best_of: expected a whole number from 2 to 64, got 1"),
    ],
    ids=["no-teacher", "teacher-is-policy", "best-of-one"],
)
@pytest.mark.slow
def test_the_new_contrasts_refuse_what_they_cannot_honour(popalign, flags, line: str, tmp_path: Path) -> None:
    refused = popalign("build", *flags, "--out", tmp_path / "d")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == f"popalign: error: {line}"
