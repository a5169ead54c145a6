"""A fork server for the kill tests: it imports popalign once, then runs each `popalign` command it is sent in a
forked child that kills itself with SIGKILL just before its N-th change to the file system (a file or folder
made, written, renamed or removed, a Parquet write), so a test can stop a command at every instant of its writing.

One JSON object per line on stdin, `{"argv": [...], "kill_at": N or null, "exchange": true}` (`exchange: false`
takes away `renameat2`, so the swap is two renames); one per line on stdout, `{"status": exit status, or -9 when
killed, "changes": changes made}`.

    python tests/kill_points.py < commands.jsonl
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any

import pyarrow.parquet

import popalign.backends.endpoint
import popalign.dataset.folder
import popalign.pipeline
from popalign.api import quiet_libraries
from popalign.cli import main

CHANGES: list[tuple[Any, str]] = [
    (os, "rename"), (os, "replace"), (os, "rmdir"), (os, "mkdir"), (os, "unlink"), (shutil, "rmtree"),
    (shutil, "move"), (shutil, "copytree"), (shutil, "copy2"), (pathlib.Path, "write_text"),
    (pathlib.Path, "write_bytes"), (pyarrow.parquet.ParquetWriter, "write_table"),
]  # fmt: skip


def run_child(argv: list[str], kill_at: int | None, exchange: bool, report: int) -> None:
    """In the forked child: count (and at `kill_at`, die at) every change, run the command, report the count."""
    made = 0

    def counted(function: Callable[..., Any]) -> Callable[..., Any]:
        def change(*args: Any, **kwargs: Any) -> Any:
            nonlocal made
            made += 1
            if made == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return change

    for owner, name in CHANGES:
        setattr(owner, name, counted(getattr(owner, name)))
    if not exchange:
        popalign.dataset.folder._exchange = lambda a, b: False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    status = main(argv)
    os.write(report, str(made).encode())
    os._exit(status)


def serve() -> None:
    quiet_libraries()
    for line in sys.stdin:
        command = json.loads(line)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(read)
            run_child(command["argv"], command.get("kill_at"), command.get("exchange", True), write)
        os.close(write)
        _, wait_status = os.waitpid(child, 0)
        made = os.read(read, 64).decode()
        os.close(read)
        status = -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)
        print(json.dumps({"status": status, "changes": int(made) if made else command.get("kill_at")}), flush=True)


if __name__ == "__main__":
    serve()
