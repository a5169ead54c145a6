"""Cost per kept pair against the scripted server, which reports a known usage (a word is a token, a message 3
more): the token counts per strategy are exact and priced as given, a budget stops a build cleanly and a rerun with a
larger one resumes to the very build an unbudgeted run makes, and a dry run's estimate from a sample lands within a
stated bound of the build it estimates."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import pytest

import popalign
from helpers import POPALIGN, load, manifest, run_offline, serve_scripted

#: How far a dry run's estimate of the tokens may be from the build's, on the varied instructions below.
ESTIMATE_BOUND = 0.10


def _prompts(folder: Path, texts: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in texts))
    return path


def _build(folder: Path, url: str, texts: list[str], *flags: str | Path, out: str = "d"):
    result = run_offline(
        POPALIGN, "build", "--prompts", _prompts(folder, texts), "--out", folder / out, "--no-progress",
        "--model", f"default={url}", *flags, HF_HUB_OFFLINE="0",
    )  # fmt: skip
    return result, folder / out


def _usage(entry: dict) -> tuple[int, int]:
    """(in, out) as the scripted server counts them."""
    return sum(len(m["content"].split()) + 3 for m in entry["messages"]), len(entry["answer"].split())


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


TEXTS = [f"Explain topic {n} [ok]." for n in range(3)]


@pytest.mark.slow
def test_token_counts_are_exact_per_strategy_and_priced_as_given(scripted, tmp_path: Path) -> None:
    url, log = scripted
    result, out = _build(tmp_path, url, TEXTS, "--strategies", "prefix,demon", "--price", "default=2,8", "--no-cache")
    assert result.returncode == 0, result.stderr
    entries = _log(log)
    sides = {"prefix": [e for e in entries if len(e["messages"]) == 1], "demon": [e for e in entries if
             len(e["messages"]) > 1]}  # fmt: skip
    for name, asked in sides.items():
        tokens_in, tokens_out = (sum(_usage(e)[i] for e in asked) for i in (0, 1))
        record = manifest(out)["configs"][name]
        assert (record["requests"], record["prompt_tokens"], record["tokens"]) == (6, tokens_in, tokens_out)
        assert record["usage"] == {"default": [tokens_in, tokens_out]}
        assert record["cost"] == round((2 * tokens_in + 8 * tokens_out) / 1e6, 6)
        assert record["cost_per_pair"] == round(record["cost"] / record["rows"], 8) and record["rows"] == 3
        assert record["tokens_per_pair"] == round((tokens_in + tokens_out) / 3, 1)
    spent_in, spent_out = (sum(_usage(e)[i] for e in entries) for i in (0, 1))
    assert f"({spent_in} tokens in, {spent_out} out)" in result.stdout
    assert re.search(r"^prefix +6 +[\d,]+ +[\d,]+ +[\d,]+ +\$[\d.e-]+ +\$[\d.e-]+$", result.stdout, re.M)
    assert manifest(out)["prices"] == {"default": "2,8"}
    card = (out / "README.md").read_text()
    assert "| config | requests | tokens in | tokens out | tokens per kept pair | cost | cost per kept pair |" in card
    assert f"| `prefix` | 6 | {manifest(out)['configs']['prefix']['prompt_tokens']:,} |" in card


@pytest.mark.slow
def test_cached_answers_cost_the_same_tokens_in_the_record(scripted, tmp_path: Path) -> None:
    url, log = scripted
    first, out = _build(tmp_path, url, TEXTS, "--strategies", "prefix,refine", "--cache-dir", tmp_path / "cache")
    asked = len(_log(log))
    again, _ = _build(tmp_path, url, TEXTS, "--strategies", "prefix,refine", "--cache-dir", tmp_path / "cache",
                      out="again")  # fmt: skip
    assert first.returncode == again.returncode == 0, again.stderr
    assert len(_log(log)) == asked and "(0 tokens in, 0 out)" in again.stdout  # nothing generated, nothing spent
    assert manifest(tmp_path / "again")["configs"] == manifest(out)["configs"]  # what the pairs cost to make


MANY = [f"Explain {'a rather long and winding ' * (n % 5)}topic number {n} [ok]." for n in range(12)]
STRATEGIES = ("--strategies", "prefix,demon,refine")


@pytest.mark.slow
def test_a_budget_stops_cleanly_and_a_larger_one_resumes_to_the_unbudgeted_build(tmp_path: Path) -> None:
    serve = contextmanager(serve_scripted)
    (tmp_path / "whole").mkdir()
    (tmp_path / "part").mkdir()
    with serve(tmp_path / "whole", "scripted-default") as (url, log):
        whole, whole_out = _build(tmp_path / "whole", url, MANY, *STRATEGIES, "--no-cache")
        spent = sum(sum(_usage(e)) for e in _log(log))
    assert whole.returncode == 0, whole.stderr
    with serve(tmp_path / "part", "scripted-default") as (url, log):
        cache = ("--cache-dir", tmp_path / "part" / "cache", "--concurrency", "2")
        stopped, out = _build(tmp_path / "part", url, MANY, *STRATEGIES, *cache, "--budget", str(spent // 3))
        asked = len(_log(log))
        assert stopped.returncode == 2 and not out.exists()  # nothing written
        line = stopped.stderr.strip().splitlines()[-1]
        assert line.startswith(f"popalign: error: {out}: the budget of {spent // 3:,} tokens is spent (")
        assert line.endswith("each kept in the cache): nothing was written; rerun with a larger --budget to go on")
        assert 0 < asked < len(MANY) * 6
        resumed, out = _build(tmp_path / "part", url, MANY, *STRATEGIES, *cache, "--budget", str(spent * 2))
        assert resumed.returncode == 0, resumed.stderr
        entries = _log(log)
    keys = [json.dumps([e["messages"], e["seed"]]) for e in entries]
    assert (
        len(keys) == len(set(keys)) == len(MANY) * 6
    )  # every request asked once over both runs: none lost, none again
    for name in ("prefix", "demon", "refine"):
        rows = sorted(load(out, name).to_list(), key=lambda row: row["prompt_id"])
        assert rows == sorted(load(whole_out, name).to_list(), key=lambda row: row["prompt_id"])
    assert manifest(out)["configs"] == manifest(whole_out)["configs"]


@pytest.mark.slow
def test_a_money_budget_stops_at_the_prices(scripted, tmp_path: Path) -> None:
    url, _ = scripted
    flags = ("--strategies", "prefix", "--no-cache", "--price", "default=1000,1000", "--budget", "$0.01")
    stopped, _out = _build(tmp_path, url, MANY, *flags, "--concurrency", "1")
    assert stopped.returncode == 2 and "the budget of $0.01 is spent ($0.0" in stopped.stderr


VARIED = [f"Say {'something long and detailed ' * (n % 7)}about item {n} [ok]." for n in range(40)]


@pytest.mark.slow
def test_a_dry_run_estimates_the_build_from_a_sample_and_writes_nothing(scripted, tmp_path: Path) -> None:
    url, log = scripted
    flags = ("--strategies", "prefix,refine", "--price", "default=1,4", "--cache-dir", tmp_path / "cache")
    dry, out = _build(tmp_path, url, VARIED, *flags, "--dry-run", "--dry-run-sample", "8")
    assert dry.returncode == 0, dry.stderr
    assert not out.exists() and len(_log(log)) == 8 * 4  # the sample's requests alone
    assert "estimate for all 40 instructions, from a build of 8 evenly spaced through them:" in dry.stdout
    rows = {line.split()[0]: line.split() for line in dry.stdout.splitlines() if line.startswith(("prefix", "refine"))}
    assert rows["refine"][-1].startswith("$")  # refine's reviser is the default model, at the default's price
    built, out = _build(tmp_path, url, VARIED, *flags)
    assert built.returncode == 0, built.stderr
    assert len(_log(log)) == 40 * 4  # the build reused the dry run's answers
    for name, record in manifest(out)["configs"].items():
        requests, tokens_in, tokens_out = (float(value.replace(",", "")) for value in rows[name][1:4])
        assert requests == record["requests"]  # every instruction asks the same requests: exact
        for guess, actual in ((tokens_in, record["prompt_tokens"]), (tokens_out, record["tokens"])):
            assert abs(guess - actual) <= ESTIMATE_BOUND * actual, (name, guess, actual)


def test_the_api_refuses_a_dry_run_build_and_estimates_instead(tmp_path: Path) -> None:
    with pytest.raises(popalign.ConfigError, match=r"^dry_run: a dry run writes no build; call popalign\.estimate"):
        popalign.build(out=tmp_path / "d", dry_run=True)
