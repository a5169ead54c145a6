"""Loopback helpers shared by the test servers."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on loopback nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_process(
    command: Sequence[str | Path],
    log: Path,
    probe: str,
    *,
    ready: Callable[[int], bool] = lambda status: True,
    cwd: Path | None = None,
    timeout: float = 120,
) -> Iterator[None]:
    """Run a server process (output to `log`) until the block ends; enter the block once `probe` answers with a
    status `ready` accepts."""
    with log.open("w") as sink:
        server = subprocess.Popen(list(map(str, command)), stdout=sink, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=2) as response:
                    status = response.status
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                status = None
            if status is not None and ready(status):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


class JSONHandler(BaseHTTPRequestHandler):
    """A quiet request handler of the test servers that answers in JSON."""

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass
