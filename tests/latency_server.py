"""An OpenAI-compatible chat server that answers every request after a fixed delay, with faults on a schedule, for
the resting and retry tests (in its own process, so timing on the client side is the client's own):

- `burst`: HTTP 503 to every chat request that arrives during `--burst` seconds, starting one second after the
  first chat request;
- `reset`: every fifth chat request has its connection reset;
- `timeout`: every tenth chat request is held past any client's time-out, then dropped;
- `retry-after`: every chat request gets HTTP 429 with `Retry-After: 86400`;
- `--models-503 N`: the first N calls of `/v1/models` get HTTP 503;
- `--rps R`: a hosted API's rate limit, a token bucket of R chat requests a second (holding one second's worth):
  beyond it, HTTP 429 with `Retry-After: 1`; `GET /stats` counts the requests refused.

It appends one line per chat request it answers to `--log`: its port and the chat's last message.

    python tests/latency_server.py --port 8080 --delay 0.2 --fault burst
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from net import JSONHandler

FAULTS = ("none", "burst", "reset", "timeout", "retry-after")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # read by listen(): a short backlog drops connections, which then wait 1 s to retry


class Handler(JSONHandler):
    protocol_version = "HTTP/1.1"
    settings: argparse.Namespace
    lock = threading.Lock()
    chats = 0
    models = 0
    first: float | None = None
    bucket: tuple[float, float] | None = None  # the rate limit's level and when it was last filled
    refused = 0

    def do_GET(self) -> None:
        if self.path == "/stats":
            return self._reply(200, {"refused": Handler.refused})
        if self.path != "/v1/models":
            return self._reply(200 if self.path == "/health" else 404, {})
        with self.lock:
            Handler.models += 1
            refuse = Handler.models <= self.settings.models_503
        if refuse:
            self._reply(503, {"error": "loading"})
        else:
            self._reply(200, {"object": "list", "data": [{"id": self.settings.model, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fault = "429-limit" if not self._admitted() else self._fault()
        if fault == "429-limit":
            return self._too_many(retry_after=1)
        if fault == "503":
            return self._reply(503, {"error": "overloaded"})
        if fault == "429":
            return self._too_many(retry_after=86400)
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return self.connection.close()
        if fault == "stall":
            time.sleep(self.settings.stall)
            self.close_connection = True
            return None
        time.sleep(self.settings.delay)
        with self.lock, self.settings.log.open("a") as log:
            log.write(
                json.dumps({"port": self.server.server_address[1], "chat": body["messages"][-1]["content"]}) + "\n"
            )
        content = f"Answer to: {body['messages'][-1]['content']}"
        self._reply(
            200,
            {
                "id": "latency",
                "object": "chat.completion",
                "created": 0,
                "model": self.settings.model,
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

    def _too_many(self, retry_after: int) -> None:
        """HTTP 429 with `Retry-After` in seconds."""
        self.send_response(429)
        self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def _admitted(self) -> bool:
        """Whether the rate limit (`--rps`) lets this chat request through now."""
        rate = self.settings.rps
        if rate is None:
            return True
        with self.lock:
            now = time.monotonic()
            level, at = Handler.bucket if Handler.bucket else (rate, now)
            level = min(rate, level + (now - at) * rate)
            admitted = level >= 1
            Handler.bucket = (level - 1 if admitted else level, now)
            Handler.refused += not admitted
        return admitted

    def _fault(self) -> str:
        """The fault this chat request gets, by the schedule."""
        with self.lock:
            Handler.chats += 1
            number, now = Handler.chats, time.monotonic()
            if Handler.first is None:
                Handler.first = now
            since = now - Handler.first
        fault = self.settings.fault
        if fault == "burst" and 1.0 <= since < 1.0 + self.settings.burst:
            return "503"
        if fault == "reset" and number % 5 == 0:
            return "reset"
        if fault == "timeout" and number % 10 == 0:
            return "stall"
        if fault == "retry-after":
            return "429"
        return "pass"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="latency")
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--burst", type=float, default=2.0)
    parser.add_argument("--stall", type=float, default=1.5)
    parser.add_argument("--models-503", type=int, default=0)
    parser.add_argument("--rps", type=float, default=None)
    parser.add_argument("--log", type=Path, required=True)
    Handler.settings = parser.parse_args()
    Server(("127.0.0.1", Handler.settings.port), Handler).serve_forever()
