"""Bad input: one clear line naming the file, row or field, exit 2, no traceback, nothing generated."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from popalign.errors import PromptsError
from popalign.prompts import load_prompts


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def binary(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def jsonl(path: Path, *rows: object) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def test_reads_each_format_and_skips_duplicates(tmp_path: Path) -> None:
    texts = ["Say hi.", "Say bye.", "Say hi."]
    sources = [
        jsonl(tmp_path / "p.jsonl", *({"prompt": t} for t in texts)),
        write(tmp_path / "p.csv", "id,instruction\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts))),
        tmp_path / "p.parquet",
    ]
    pq.write_table(pa.table({"question": texts}), sources[2])
    for source, column in zip(sources, [None, None, "question"], strict=True):
        prompts = load_prompts(source, column=column)
        assert [i.text for i in prompts.instructions] == ["Say hi.", "Say bye."]
        assert prompts.duplicates == 1
    assert len(load_prompts(sources[0], limit=1).instructions) == 1


def test_bundled_prompts_are_varied_and_distinct() -> None:
    prompts = load_prompts()
    assert len(prompts.instructions) >= 12 and prompts.duplicates == 0


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input: the build flags that give it, and the exact error line expected."""
    pq.write_table(pa.table({"prompt": ["fine", None]}), tmp_path / "nulls.parquet")
    templates = tmp_path / "templates"
    templates.mkdir()
    write(templates / "refine.jinja", "{% if %}")
    cases = {
        "missing file": (tmp_path / "nope.jsonl", "prompts file not found"),
        "empty file": (write(tmp_path / "empty.jsonl", ""), "no rows"),
        "empty csv": (write(tmp_path / "empty.csv", "prompt\n"), "no rows"),
        "missing column": (
            jsonl(tmp_path / "cols.jsonl", {"text": "a", "id": 1}),
            "no column 'prompt', 'instruction', 'messages', 'conversations' or 'chosen' (columns: text, id); "
            "pass --prompt-column",
        ),
        "non-text value": (
            jsonl(tmp_path / "int.jsonl", {"prompt": "ok"}, {"prompt": 7}),
            "row 2: field 'prompt' is int, expected text",
        ),
        "null value": (tmp_path / "nulls.parquet", "row 2: field 'prompt' is NoneType, expected text"),
        "blank value": (write(tmp_path / "blank.csv", "prompt\nok\n  \n"), "row 2: field 'prompt' is empty"),
        "bad json": (
            write(tmp_path / "bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n'),
            "line 2: not valid JSON (Expecting value)",
        ),
        "unknown format": (
            write(tmp_path / "p.txt", "hello"),
            "unsupported prompts format '.txt' (use .jsonl, .csv, .parquet)",
        ),
        "parquet that is not": (
            write(tmp_path / "fake.parquet", "prompt\nhello\n"),
            "not a readable Parquet file (Could not open Parquet input source",
        ),
        "jsonl not utf-8": (
            binary(tmp_path / "latin.jsonl", b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n'),
            "line 2: not UTF-8 text (invalid continuation byte)",
        ),
    }
    flags = {
        name: (["--prompts", str(path)], f"popalign: error: {path}: {message}")
        for name, (path, message) in cases.items()
    }
    flags["missing named column"] = (
        ["--prompts", str(jsonl(tmp_path / "ok.jsonl", {"prompt": "a"})), "--prompt-column", "question"],
        f"popalign: error: {tmp_path / 'ok.jsonl'}: no column 'question' (columns: prompt)",
    )
    flags["unknown strategy"] = (
        ["--strategies", "prefix,contrastive"],
        "popalign: error: unknown strategy 'contrastive' "
        "(known: prefix, demon, elicitive, nparam, leaderboard, refine, bestofn, teacher, temperature, all, paper)",
    )
    flags["unknown role"] = (
        ["--model", "huge=smollm2"],
        "popalign: error: roles: unknown role 'huge' (known: default, large, small, first, second, planner, reviser, "
        "ranker, teacher)",
    )
    flags["role missing"] = (
        ["--model", "default=smollm2", "--strategies", "prefix,nparam"],
        "popalign: error: strategy 'nparam' needs model roles large, small: pass --model large=SPEC --model small=SPEC",
    )
    flags["same model on both sides"] = (
        ["--model", "first=smollm2", "--model", "second=smollm2", "--strategies", "leaderboard"],
        "popalign: error: strategy 'leaderboard' contrasts roles first and second, but both are smollm2: "
        "give them different models or generation parameters",
    )
    flags["bad model option"] = (
        ["--model", "small=smollm2:layer=3"],
        "popalign: error: model spec 'smollm2:layer=3': unknown option 'layer=3' (known: layers=N, engine=NAME)",
    )
    flags["shard of superscripts"] = (
        ["--shard", "²/3"],
        "popalign: error: shard: expected K/N with 1 <= K <= N, got '²/3'",
    )
    flags["empty shard"] = (["--shard", ""], "popalign: error: shard: expected K/N with 1 <= K <= N, got ''")
    flags["out under a file"] = (
        ["--out", "/dev/null/x"],
        "popalign: error: /dev/null/x: cannot create the output folder (/dev/null is not a folder)",
    )
    for repo in ("org/x.git", "org/da--ta", "../..", "org/dätä"):
        flags[f"push-to {repo}"] = (
            ["--push-to", repo, "--release", "1.0.0"],
            f"popalign: error: repository {repo!r}: ",
        )
    for flag, value, expected in [
        ("--temperature", "nan", "a number >= 0 (0 is greedy)"),
        ("--temperature", "-1", "a number >= 0 (0 is greedy)"),
        ("--top-p", "5", "a number in (0, 1]"),
        ("--max-new-tokens", "0", "a whole number >= 1"),
        ("--timeout", "-1", "a number of seconds > 0"),
    ]:
        key = flag[2:].replace("-", "_")
        flags[f"{flag} {value}"] = ([flag, value], f"popalign: error: {key}: expected {expected}, got {value}")
    flags["unreadable template"] = (
        ["--templates", str(templates)],
        f"popalign: error: {templates / 'refine.jinja'}: line 1: "
        "template syntax error (Expected an expression, got 'end of statement block')",
    )
    return flags


CASES = [
    "missing file", "empty file", "empty csv", "missing column", "non-text value", "null value", "blank value",
    "bad json", "unknown format", "missing named column", "unknown strategy", "unknown role", "role missing",
    "same model on both sides", "bad model option", "unreadable template", "parquet that is not", "jsonl not utf-8",
    "shard of superscripts", "empty shard", "out under a file", "push-to org/x.git", "push-to org/da--ta",
    "push-to ../..", "push-to org/dätä", "--temperature nan", "--temperature -1", "--top-p 5", "--max-new-tokens 0",
    "--timeout -1",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(case: str, bad_inputs, popalign, tmp_path: Path) -> None:
    flags, expected = bad_inputs[case]
    result = popalign("build", "--out", tmp_path / "out", "--cache-dir", tmp_path / "cache", *flags)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(expected)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # refused before any work


@pytest.mark.parametrize("repo", ["org/x.git", "org/da--ta", "../..", "org/dätä", "a/b/c"])
@pytest.mark.parametrize("command", ["push", "versions"])
@pytest.mark.slow
def test_a_bad_repo_id_is_one_line(command: str, repo: str, popalign, tmp_path: Path) -> None:
    args = [tmp_path, "--repo", repo, "--release", "1.0.0"] if command == "push" else [repo]
    result = popalign(command, *args)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"popalign: error: repository {repo!r}: ")


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    source = binary(tmp_path / "excel.csv", "\ufeffprompt,id\nSay hi.,1\n".encode())
    assert [i.text for i in load_prompts(source).instructions] == ["Say hi."]


@pytest.mark.slow
def test_bad_flag_value_is_one_line(popalign) -> None:
    result = popalign("build", "--limit", "-3")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["popalign: error: limit: expected a whole number >= 1, got -3"]


@pytest.mark.slow
def test_out_folder_of_something_else_is_refused(tmp_path: Path, popalign) -> None:
    write(tmp_path / "thesis.tex", "precious")
    result = popalign("build", "--out", tmp_path, "--limit", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"popalign: error: {tmp_path}: folder is not empty and holds no popalign build; choose another --out"
    ]
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_prompts_error_is_a_named_exception(tmp_path: Path) -> None:
    with pytest.raises(PromptsError):
        load_prompts(tmp_path / "missing.csv")
