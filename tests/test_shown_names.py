"""What reaches a terminal or a card: a URL's credentials are taken out however the URL is written (a `#` or `?` in
the password, a mistyped scheme), through the command line, a recipe and the Python API alike; a served model's
name with terminal escapes, newlines and a `|` is printed and published escaped, and the card's table keeps its
columns."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

import popalign
from helpers import POPALIGN, manifest, prompts, run_offline, serve_scripted
from net import free_port
from popalign.errors import PopAlignError

PASSWORD = "s3cretPassw0rd"
HOSTILE = "org/model\x1b]0;owned\x07\nsecond line|column"


def mistyped(port: int) -> list[str]:
    """Endpoint URLs whose password a naive parser shows: a `#` or `?` in it, or a scheme written wrongly."""
    return [
        f"http://alice:{PASSWORD}#x@127.0.0.1:{port}",
        f"http://alice:pw?{PASSWORD}@127.0.0.1:{port}/v1",
        f"http//alice:{PASSWORD}@127.0.0.1:{port}",
        f"http:/alice:{PASSWORD}@127.0.0.1:{port}",
        f"http:alice:{PASSWORD}@127.0.0.1:{port}",
        f"HTTP://alice:{PASSWORD}@127.0.0.1:{port}:99",
    ]


@pytest.mark.slow
def test_a_password_is_never_shown_however_the_url_is_written(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: every command is refused before or at its first request
    for k, url in enumerate(mistyped(port)):
        recipe = tmp_path / f"recipe-{k}.yaml"
        recipe.write_text(json.dumps({"roles": {"default": url}, "strategies": ["prefix"], "limit": 1}))
        for flags in (["--model", f"default={url}", "--strategies", "prefix"], ["--recipe", recipe],
                      ["--judge-model", url, "--strategies", "prefix"]):  # fmt: skip
            result = run_offline(POPALIGN, "build", *flags, "--limit", 1, "--out", tmp_path / f"d{k}", "--no-cache",
                                 "--no-progress", HF_HUB_OFFLINE="0")  # fmt: skip
            assert result.returncode == 2, (url, flags)
            assert len(result.stderr.strip().splitlines()) == 1, (url, flags, result.stderr)
            assert PASSWORD not in result.stdout + result.stderr and "alice" not in result.stderr, (url, flags)
        with pytest.raises(PopAlignError) as refused:
            popalign.build(strategies=["prefix"], roles={"default": url}, out=tmp_path / f"api{k}", limit=1,
                           cache=False, progress=False)  # fmt: skip
        assert PASSWORD not in str(refused.value) and "alice" not in str(refused.value), url
    said = run_offline(POPALIGN, "build", "--model", f"default={mistyped(port)[0]}", "--out", tmp_path / "x")
    assert "its user part holds '#' or '?'; write them as %23 and %3F" in said.stderr


@pytest.mark.slow
def test_a_served_name_with_escapes_and_newlines_is_printed_and_published_escaped(tmp_path: Path) -> None:
    with contextmanager(serve_scripted)(tmp_path, HOSTILE) as (url, _):
        out = tmp_path / "d"
        result = run_offline(POPALIGN, "build", "--prompts", prompts(tmp_path, ["a", "b"]), "--model", f"default={url}",
                             "--strategies", "prefix,refine", "--out", out, "--no-cache", "--no-progress",
                             HF_HUB_OFFLINE="0")  # fmt: skip
        built = popalign.build(prompts(tmp_path, ["a", "b"]), strategies=["prefix"], roles={"default": url},
                               out=tmp_path / "api", cache=False, progress=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = "org/model\\x1b]0;owned\\x07\\x0asecond line|column"
    assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
    assert shown in result.stdout
    card = (out / "README.md").read_text()
    assert "\x1b" not in card and not any(line.startswith("second line") for line in card.splitlines())
    lines = card.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("| config | kind | chosen |"))
    table = lines[header + 2 : header + 4]  # the configs' rows, after the header and its rule
    assert [line.split(" | ")[0] for line in table] == ["| `prefix`", "| `refine`"]
    assert all(line.replace("\\|", "").count("|") == lines[header].count("|") for line in table)
    assert manifest(out)["roles"]["default"] == shown
    assert {row["chosen_model"] for row in built.rows("prefix")} == {shown}
