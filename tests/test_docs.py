"""The docs' `console` blocks run as a user types them: each `$ ` command (a `\\` at a line's end continues it) in
a folder holding `popalign-data`, a build against the scripted server, which stands in for the pages'
`http://localhost:8080`; what each prints must be what the page shows, where a `...` line stands for any lines and
a `...` in a line for any text."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import POPALIGN, run_offline, serve_scripted

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```console\n(.*?)^```", re.DOTALL | re.MULTILINE)
SERVER = "http://localhost:8080"


def examples() -> list[tuple[str, str]]:
    """Every console block, by page and place."""
    found = []
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            found.append((f"{page.relative_to(ROOT)}#{number}", match[1]))
    return found


def steps(block: str) -> list[tuple[str, list[str]]]:
    """A block's commands, each with the lines the page says it prints."""
    parsed: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        assert line.startswith("$ "), f"a console block starts each command with '$ ': {line!r}"
        command = line[2:]
        while command.endswith("\\"):
            index += 1
            command = command[:-1] + " " + lines[index].strip()
        index += 1
        printed = []
        while index < len(lines) and not lines[index].startswith("$ "):
            printed.append(lines[index])
            index += 1
        parsed.append((command, printed))
    return parsed


def shows(expected: list[str], actual: list[str]) -> bool:
    """Whether `actual` is what `expected` shows: `...` alone is any lines, `...` in a line any text."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() == "...":
        return any(shows(rest, actual[start:]) for start in range(len(actual) + 1))
    pattern = ".*".join(map(re.escape, head.rstrip().split("...")))
    return bool(actual) and re.fullmatch(pattern, actual[0].rstrip()) is not None and shows(rest, actual[1:])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A folder with `popalign-data` (prefix and refine on four bundled instructions), and the server's URL."""
    folder = tmp_path_factory.mktemp("docs")
    with contextmanager(serve_scripted)(folder, "scripted-default") as (url, _):
        built = run_offline(POPALIGN, "build", "--limit", "4", "--strategies", "prefix,refine", "--model",
                            f"default={url}", "--out", folder / "popalign-data", "--no-progress",
                            "--cache-dir", folder / "cache", HF_HUB_OFFLINE="0", PATH=_path())  # fmt: skip
        assert built.returncode == 0, built.stderr
        yield folder, url


def _path() -> str:
    """The command search path with this environment's `popalign` first."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def test_the_parser_reads_blocks_and_matches_elisions() -> None:
    assert steps("$ a \\\n    b\nout\n$ c\n") == [("a  b", ["out"]), ("c", [])]
    assert shows(["x ... z", "...", "end"], ["x y z", "1", "2", "end"])
    assert not shows(["x ... z", "end"], ["x y z", "1", "end"])
    assert not shows(["exact"], ["exact", "more"])
    assert len(examples()) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("where, block", examples(), ids=[where for where, _ in examples()])
def test_every_console_block_prints_what_its_page_shows(
    where: str, block: str, workspace: tuple[Path, str], tmp_path: Path
) -> None:
    folder, url = workspace
    shutil.copytree(folder / "popalign-data", tmp_path / "popalign-data")
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "PATH": _path(), "COLUMNS": "100",
           "POPALIGN_CACHE": str(folder / "cache")}  # fmt: skip
    for command, expected in steps(block):
        done = subprocess.run(["bash", "-c", command.replace(SERVER, url)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        printed = (done.stdout + done.stderr).splitlines()
        assert shows(expected, printed), f"{where}: $ {command}\n" + "\n".join(printed)
