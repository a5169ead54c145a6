"""A build folder is always whole: a command killed (SIGKILL) at any instant of its writing leaves either the old
complete build or the new one, rerunning it finishes the same dataset, and a broken manifest is one line.

The commands run in forked children of `kill_points.py` (imports paid once), against the scripted endpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet
import pytest

from helpers import HERE, prompts, serve_scripted
from popalign.dataset.folder import recover

pytestmark = pytest.mark.slow
Run = Callable[..., dict[str, Any]]


@pytest.fixture
def fork_server(tmp_path: Path) -> Iterator[Run]:
    """Send a `popalign` command to the fork server: `run(argv, kill_at=N, exchange=True)` → status and changes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}
    server = subprocess.Popen(
        [sys.executable, HERE / "kill_points.py"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert server.stdin and server.stdout

    def run(argv: list[str | Path], kill_at: int | None = None, exchange: bool = True) -> dict[str, Any]:
        command = {"argv": list(map(str, argv)), "kill_at": kill_at, "exchange": exchange}
        server.stdin.write(json.dumps(command) + "\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
        return json.loads(server.stdout.readline())  # type: ignore[union-attr]

    yield run
    server.stdin.close()
    server.wait(timeout=60)


def state(out: Path) -> dict[str, Any] | None:
    """What a reader of `out` finds: None for no build (absent or empty), else its manifest, card and rows."""
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest = json.loads((out / "popalign_build.json").read_text())
    data = {d.name: pyarrow.parquet.read_table(d).to_pylist() for d in sorted((out / "data").iterdir())}
    assert sorted(data) == sorted(name for name, config in manifest["configs"].items() if config["rows"])
    return {"manifest": manifest, "card": (out / "README.md").read_text(), "data": data}


def test_a_build_killed_at_any_instant_of_its_writing_leaves_a_whole_folder(fork_server: Run, tmp_path: Path) -> None:
    with contextmanager(serve_scripted)(tmp_path, "scripted-default") as (url, _log):
        source = prompts(tmp_path, ["ok", "tides", "moon", "near-copy"])

        def argv(limit: int, out: Path) -> list[str | Path]:
            return [
                "build", "--prompts", source, "--limit", limit, "--out", out, "--cache-dir", tmp_path / "cache",
                "--no-progress", "--templates", HERE / "scripted_templates", "--model", f"default={url}",
                "--strategies", "prefix,demon,elicitive",
            ]  # fmt: skip

        # the references are built under the same folder name as the killed builds, so their cards match too
        assert fork_server(argv(2, tmp_path / "old" / "d"))["status"] == 0
        clean = fork_server(argv(4, tmp_path / "new" / "d"))
        assert clean["status"] == 0 and clean["changes"] > 10
        old, new = state(tmp_path / "old" / "d"), state(tmp_path / "new" / "d")
        assert old and new and old["data"] != new["data"]
        out = tmp_path / "d"

        def prepare(before: dict[str, Any] | None) -> None:
            shutil.rmtree(out, ignore_errors=True)
            if before:
                shutil.copytree(tmp_path / "old" / "d", out)

        for before in (None, old):  # a first build, and a rebuild over an older one
            prepare(before)
            changes = fork_server(argv(4, out))["changes"]
            for exchange in (True, False):  # one atomic exchange, or two renames
                # the two ways differ only in the swap, among the last changes
                for kill_at in range(1 if exchange else changes - 40, changes + 1):
                    prepare(before)
                    killed = fork_server(argv(4, out), kill_at=kill_at, exchange=exchange)
                    assert killed == {"status": -9, "changes": kill_at}
                    found = state(out)
                    if found is None and before and not exchange:  # killed between the two renames:
                        recover(out)  # what the next popalign command on the folder does first
                        found = state(out)
                    assert found in (before, new), (exchange, kill_at, before is old)
                    assert fork_server(argv(4, out))["status"] == 0
                    assert state(out) == new
                    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".d.")] == []


def test_a_broken_manifest_is_one_line(popalign: Callable, embedded_build, tmp_path: Path) -> None:
    source, _ = embedded_build
    for broken in ('{"configs": {"prefix": ', "\xff\xfe", "[]"):
        folder = tmp_path / "broken"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source, folder)
        (folder / "popalign_build.json").write_bytes(broken.encode("latin-1"))
        for command in (
            ["push", folder, "--repo", "org/name", "--release", "1.0.0"],
            ["merge", folder, folder, "--out", tmp_path / "m"],
            ["score", folder],
        ):
            result = popalign(*command)
            assert result.returncode == 2, result.stderr
            (line,) = result.stderr.splitlines()
            assert line.startswith(f"popalign: error: {folder / 'popalign_build.json'}: ")
