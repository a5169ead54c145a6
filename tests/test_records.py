"""The manifest's typed records: every field reads back as written, a field of the wrong type is refused in one line
naming it, records answer as their JSON did, and a rewrite keeps what making the pairs recorded."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from popalign.dataset.folder import MANIFEST, Manifest, open_manifest
from popalign.dataset.records import ConfigRecord, JudgeRecord, JudgeSummary, QualityRecord, Record, ScoreRecord
from popalign.dataset.rows import keep_sides
from popalign.errors import TamperedBuildError

#: A value for every field of every record, as a manifest holds it: a field added without one fails the round trip.
SAMPLES: dict[type[Record], dict[str, Any]] = {
    ConfigRecord: {
        "rows": 12, "dropped": {"duplicate": 1}, "truncation": {"pairs": 13, "cut": 1, "rate": 0.0769},
        "splits": {"train": 9, "test": 3}, "chosen_chars": 36, "rejected_chars": 24,
        "edits": {"similarity_median": 0.611, "length_ratio_median": 1.5, "length_ratio_max": 1.5,
                  "over_half_longer": 0.0},
        "example": {"prompt": "Tips?", "chosen": "A careful answer.", "rejected": "A vague one."},
        "turns": {"1": 10, "3": 2}, "system_turns": 2,
        "dataset_info": {"features": [{"name": "prompt_id", "dtype": "string"}], "dataset_size": 10},
        "chosen_model": "big", "rejected_model": "small", "requests": 60, "tokens": 540, "prompt_tokens": 1060,
        "usage": {"default": [580, 132]}, "tokens_per_pair": 133.3, "cost": 0.00214, "cost_per_pair": 0.00017833,
        "reasoning_tokens": 300, "shapes": {"asked": 12, "in_shape": 11, "free_text": 1}, "preambles_removed": 2,
        "changed_in": "1.2.0",
    },
    ScoreRecord: {"scorer": "tiny", "contrast": "prefix", "min_score": 0.5, "swap": "negative", "order": "score"},
    QualityRecord: {
        "rows": 4, "dropped": {"identical": 1}, "score_mean": 0.375, "score_median": 0.25, "score_min": -1.0,
        "score_max": 2.0, "agreement": 0.5, "chosen_chars_mean": 2.5, "rejected_chars_mean": 2.0,
        "chosen_longer": 0.5, "histogram": "quality/prefix_scores.png", "curation": {"swapped": 1},
    },
    JudgeSummary: {
        "counts": {"chosen": 12, "rejected": 0, "tie": 0, "unparsed": 0, "failed": 0}, "accuracy": 1.0,
        "interval": [0.7575, 1.0], "longer_wins": 1.0, "dlma_agreement": 0.75,
    },
    JudgeRecord: {
        "model": "judge", "identity": {"identified_by": "name only", "weights": ""}, "kind": "llm",
        "template_sha256": "80ce", "from_logprobs": 3, "judgements": 96,
        "shapes": {"asked": 96, "in_shape": 90, "free_text": 6}, "min_judge": "agree", "configs": {},
        "chart": "quality/judge_accuracy.png", "replaced": ["older-judge"],
    },
}  # fmt: skip
SAMPLES[JudgeRecord]["configs"] = {"prefix": SAMPLES[JudgeSummary]}


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_every_field_of_a_record_reads_back_as_written_and_answers_by_its_key(cls: type[Record]) -> None:
    sample = SAMPLES[cls]
    assert sorted(sample) == sorted(f.name for f in fields(cls) if f.name != "extra"), "a field has no sample"
    record = cls.from_dict(json.loads(json.dumps(sample)))
    assert json.dumps(record.to_dict()) == json.dumps(sample)  # the same keys, in the same order
    assert cls.from_dict(record.to_dict()) == record
    assert dict(record) == sample and record["rows" if "rows" in sample else next(iter(sample))] is not None
    later = cls.from_dict(sample | {"added_by_a_later_popalign": [1]})
    assert later.to_dict() == sample | {"added_by_a_later_popalign": [1]}  # kept, not lost on a rewrite


def test_an_unset_field_is_left_out_and_the_cost_is_written_null_wherever_requests_are() -> None:
    bare = ConfigRecord(rows=0, dropped={"failed": 2})
    assert bare.to_dict() == {"rows": 0, "dropped": {"failed": 2}}
    assert "cost" not in bare and bare.get("cost", "unset") == "unset"
    costed = replace(bare, requests=4, tokens=0, prompt_tokens=0, usage={})
    assert costed.to_dict()["cost"] is None and list(costed)[-3:] == ["tokens_per_pair", "cost", "cost_per_pair"]


BAD_FIELDS = {
    "rows": (lambda m: m["configs"]["prefix"].update(rows="12"), "config 'prefix' has no row count"),
    "config model": (lambda m: m["configs"]["prefix"].update(chosen_model=5),
                     "config 'prefix': field 'chosen_model' is a number, not text"),
    "usage": (lambda m: m["configs"]["prefix"].update(usage=[1, 2]),
              "config 'prefix': field 'usage' is a list, not an object"),
    "score swap": (lambda m: m["score"].update(swap=True), "score: field 'swap' is true or false, not text"),
    "no scorer": (lambda m: m["score"].pop("scorer"), "score has no 'scorer'"),
    "quality": (lambda m: m["quality"]["prefix"].update(agreement="most"),
                "quality: config 'prefix': field 'agreement' is text, not a number"),
    "judge accuracy": (lambda m: m["judge"]["configs"]["prefix"].update(accuracy="high"),
                       "judge: config 'prefix': field 'accuracy' is text, not a number"),
    "judge interval": (lambda m: m["judge"]["configs"]["prefix"].update(interval=0.5),
                       "judge: config 'prefix': field 'interval' is a number, not a list"),
    "judge": (lambda m: m.update(judge=[]), "field 'judge' is a list, not an object"),
}  # fmt: skip


def sample_manifest() -> dict[str, Any]:
    return {
        "configs": {"prefix": SAMPLES[ConfigRecord]}, "roles": {"default": "big"}, "params": {}, "prompts": {},
        "score": SAMPLES[ScoreRecord], "quality": {"prefix": SAMPLES[QualityRecord]}, "judge": SAMPLES[JudgeRecord],
    }  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_a_record_field_of_the_wrong_type_is_refused_in_one_line_naming_it(case: str, tmp_path: Path) -> None:
    tamper, message = BAD_FIELDS[case]
    data = json.loads(json.dumps(sample_manifest()))
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    written = open_manifest(tmp_path).to_dict()
    assert {key: written[key] for key in data} == data
    tamper(data)
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(TamperedBuildError) as caught:
        open_manifest(tmp_path)
    assert str(caught.value) == f"{tmp_path / MANIFEST}: {message}; rebuild the folder"


def test_the_manifest_is_typed_through_and_still_answers_by_key() -> None:
    manifest = Manifest.from_dict(sample_manifest())
    assert manifest.configs["prefix"].rows == manifest.configs["prefix"]["rows"] == 12
    assert manifest.judge is not None and manifest.judge.configs["prefix"].interval == (0.7575, 1.0)
    assert manifest.judge["configs"]["prefix"]["accuracy"] == 1.0
    assert manifest.quality is not None and manifest.quality["prefix"].curation == {"swapped": 1}
    assert manifest.score is not None and manifest.score.swap == "negative"


def test_a_rewrite_keeps_what_making_the_pairs_recorded() -> None:
    """Scoring or judging writes a config's rows again: the models, cost, thinking tokens, shapes and preambles
    of its pairs stay (the thinking, shapes and preambles were lost before records were typed)."""
    before = ConfigRecord.from_dict(SAMPLES[ConfigRecord], "prefix")
    rewritten = ConfigRecord(rows=10, dropped={"low-score": 2})
    kept = keep_sides({"prefix": rewritten}, {"prefix": before})["prefix"]
    for key in ("chosen_model", "cost_per_pair", "reasoning_tokens", "shapes", "preambles_removed"):
        assert kept[key] == before[key], key
    assert kept.rows == 10 and kept.changed_in is None  # a rewritten config has not been published as it is
