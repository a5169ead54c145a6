"""Decontamination and near-duplicates before any request, on small local benchmark files: an instruction close to
a benchmark prompt is dropped as `contaminated`, one close to an earlier instruction as `near-duplicate` (the first
kept), none of them is ever asked, the counts and sources reach the manifest and the card, and a sharded build drops
exactly what the whole one does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import POPALIGN, load, manifest, run_offline
from popalign.decontamination import screen
from popalign.prompts import Instruction, load_prompts

INPUT = [
    "Explain how the tides of the ocean follow the moon.",  # kept
    "explain how the tides of the ocean follow the moon!",  # a near-duplicate of the first
    "Write a short poem about autumn leaves falling down.",  # in the AlpacaEval-like file, reworded a little
    "Name three primary colours that a child should know.",  # kept
    "What is the capital city of France and why?",  # in the Arena-like file
    "Describe the water cycle for a class of ten year olds.",  # kept
]
ALPACA_LIKE = ["Write a short poem about autumn leaves falling down slowly.", "List five fruits that are red."]
ARENA_LIKE = ["what is the capital city of France, and why?"]


def _files(folder: Path) -> tuple[Path, Path, Path]:
    paths = []
    for name, texts, column in (("in", INPUT, "prompt"), ("alpaca", ALPACA_LIKE, "instruction"),
                                ("arena", ARENA_LIKE, "prompt")):  # fmt: skip
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({column: text}) + "\n" for text in texts))
        paths.append(path)
    return paths[0], paths[1], paths[2]


def test_screening_drops_what_is_close_to_a_benchmark_or_to_an_earlier_instruction(tmp_path: Path) -> None:
    source, alpaca, arena = _files(tmp_path)
    instructions = load_prompts(source).instructions
    result = screen(instructions, [load_prompts(alpaca), load_prompts(arena)], near_duplicates=True)
    assert [i.text for i in result.kept] == [INPUT[0], INPUT[3], INPUT[5]]
    assert {name: [i.text for i in found] for name, found in result.contaminated.items()} == {
        "alpaca.jsonl": [INPUT[2]], "arena.jsonl": [INPUT[4]]
    }  # fmt: skip
    assert [i.text for i in result.near_duplicates] == [INPUT[1]]
    unrelated = [Instruction.from_text(text) for text in ("Sing a song.", "Count to ten slowly, please.")]
    assert screen(unrelated, [load_prompts(alpaca)], near_duplicates=True).kept == unrelated


@pytest.mark.slow
def test_a_build_drops_contaminated_and_near_duplicate_instructions_before_any_request(
    scripted, tmp_path: Path
) -> None:
    url, log = scripted
    source, alpaca, arena = _files(tmp_path)
    flags = ("--decontaminate", alpaca, "--decontaminate", arena, "--near-duplicates", "--strategies", "prefix,refine")
    built = run_offline(POPALIGN, "build", "--prompts", source, "--out", tmp_path / "d", "--no-cache", "--no-progress",
                        "--model", f"default={url}", *flags, HF_HUB_OFFLINE="0")  # fmt: skip
    assert built.returncode == 0, built.stderr
    asked = {m["content"] for line in log.read_text().splitlines() for m in json.loads(line)["messages"]}
    assert not any(INPUT[i] in text for text in asked for i in (1, 2, 4))  # never asked
    record = manifest(tmp_path / "d")
    for name in ("prefix", "refine"):
        assert record["configs"][name]["dropped"] == {"contaminated": 2, "near-duplicate": 1}
        assert sorted(r["prompt"][0]["content"] for r in load(tmp_path / "d", name)) == sorted(
            INPUT[i] for i in (0, 3, 5)
        )
    screening = record["prompts"]["screening"]
    assert (screening["contaminated"], screening["near_duplicates"]) == (2, 1)
    assert [(b["source"], b["count"], b["contaminated"]) for b in screening["benchmarks"]] == [
        ("alpaca.jsonl", 2, 1), ("arena.jsonl", 1, 1)
    ]  # fmt: skip
    card = (tmp_path / "d" / "README.md").read_text()
    assert "2 instructions dropped as `contaminated`, 1 as `near-duplicate` of an earlier one" in card
    assert "against `arena.jsonl` (sha256 `" in card and "1 prompts: 1 instructions caught" in card
    assert "- `contaminated`: the instruction is close to a prompt of a benchmark" in card
    assert "1 contaminated" in built.stdout or "2 contaminated" in built.stdout


MORE = [
    "Summarise the plot of a famous novel.",
    "Give tips for sleeping well at night.",
    "How do bees make honey?",
    "Translate good morning into Spanish.",
    "Why is the sky blue during the day?",
    "Plan a picnic for four people.",
]


@pytest.mark.slow
def test_shards_drop_what_the_whole_build_drops(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    source, alpaca, _ = _files(tmp_path)
    source.write_text(source.read_text() + "".join(json.dumps({"prompt": text}) + "\n" for text in MORE))
    flags = ("--decontaminate", alpaca, "--near-duplicates", "--strategies", "prefix", "--model", f"default={url}",
             "--no-cache", "--no-progress")  # fmt: skip
    for shard in ("1/2", "2/2"):
        part = run_offline(POPALIGN, "build", "--prompts", source, "--out", tmp_path / shard.replace("/", "-"),
                           "--shard", shard, *flags, HF_HUB_OFFLINE="0")  # fmt: skip
        assert part.returncode == 0, part.stderr
    merged = run_offline(POPALIGN, "merge", tmp_path / "1-2", tmp_path / "2-2", "--out", tmp_path / "merged")
    assert merged.returncode == 0, merged.stderr
    whole = run_offline(POPALIGN, "build", "--prompts", source, "--out", tmp_path / "whole", *flags, HF_HUB_OFFLINE="0")
    assert whole.returncode == 0, whole.stderr
    for key in ("contaminated", "near_duplicates"):
        assert (
            manifest(tmp_path / "merged")["prompts"]["screening"][key]
            == manifest(tmp_path / "whole")["prompts"]["screening"][key]
        )
    assert manifest(tmp_path / "merged")["configs"]["prefix"]["dropped"] == {"contaminated": 1, "near-duplicate": 1}
    rows = sorted(r["prompt_id"] for r in load(tmp_path / "merged", "prefix"))
    assert rows == sorted(r["prompt_id"] for r in load(tmp_path / "whole", "prefix"))


TOPICS = ("the Roman Empire", "jazz music", "the printing press", "the bicycle", "coffee", "the telescope",
          "chess", "the steam engine", "paper money", "the vaccine")  # fmt: skip


def templated(prefix: str = "") -> list[str]:
    """Ten topics in four numbered variants each: a benchmark's own near-duplicates, as templated sets have."""
    return [
        f"{prefix}Write a {n}-paragraph summary of the history of {topic}." for topic in TOPICS for n in (2, 3, 4, 5)
    ]


def test_every_copy_of_a_templated_benchmark_is_caught(tmp_path: Path) -> None:
    """Each instruction is compared with every benchmark prompt: a benchmark whose prompts are near-duplicates of
    each other catches every input that copies one, exactly or nearly, not one per group."""
    instructions = [Instruction.from_text(text) for text in templated()]
    for name, prompts in (("exact", templated()), ("near", templated("Please, "))):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in prompts))
        result = screen(instructions, [load_prompts(path)], near_duplicates=True)
        assert result.contaminated[f"{name}.jsonl"] == instructions and result.kept == [], name
        assert result.near_duplicates == [], name  # nothing is left to be a near-duplicate of


def test_short_and_exactly_copied_prompts_are_caught_without_a_signature(tmp_path: Path) -> None:
    """A prompt of fewer words than a 3-gram has no MinHash signature: its normalised text still matches."""
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi!"}) + "\n")
    found = screen([Instruction.from_text("say  HI"), Instruction.from_text("Say bye")], [load_prompts(path)],
                   near_duplicates=False)  # fmt: skip
    assert [i.text for i in found.contaminated["short.jsonl"]] == ["say  HI"]


@pytest.mark.slow
def test_a_hub_benchmark_or_prompt_set_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("prompts: org/bench\nlimit: 1\n")
    unreachable = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9
    for flags in (["--decontaminate", "org/bench"], ["--prompts", "org/bench"], ["--recipe", recipe]):
        result = run_offline(POPALIGN, "build", *flags, "--limit", "1", "--dry-run", "--out", tmp_path / "d",
                             **unreachable)  # fmt: skip
        assert result.returncode == 2, flags
        assert result.stderr.startswith("popalign: error: org/bench: cannot reach the Hub (ConnectError: "), flags
        assert result.stderr.strip().endswith("; give a local file") and result.stderr.count("\n") == 1, flags
    assert not (tmp_path / "d").exists()
