"""A fault-injecting HTTP proxy for the endpoint tests: it sits in front of a real server and, by a fixed schedule
of chat requests, answers 429 with `Retry-After`, 503, resets the connection, stalls past the client's time-out,
returns garbage, drips the real answer one byte at a time (`drip`), or sends an endless answer with a length
(`huge`) or without one (`flood`, chunked); every other request is forwarded. It records what reached the server
and how many bytes of the endless answers went out before the client hung up."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("429", "503", "reset", "stall", "garbage", "empty", "drip", "huge", "flood")
HUGE = 50_000_000
CHAT_ROUTE = "/v1/chat/completions"


class FaultProxy(ThreadingHTTPServer):
    """Forwards to `upstream`; the n-th chat request gets `schedule[n % len(schedule)]` ("pass" forwards it).
    With `token` set, requests without `Authorization: Bearer <token>` get a 401."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(
        self, upstream: str, schedule: Sequence[str] = ("pass",), *, token: str | None = None, stall=8.0, drip=0.5
    ):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = urlsplit(upstream)
        self.schedule = list(schedule)
        self.token = token
        self.stall = stall
        self.drip = drip
        self.hung_up: Counter[str] = Counter()  # drips and endless answers the client stopped reading
        self.endless_bytes = 0  # of the endless answers, bytes written before the client hung up
        self.lock = threading.Lock()
        self.chats = 0
        self.injected: Counter[str] = Counter()
        self.forwarded: list[dict] = []  # the chat requests the server answered
        self.headers_seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_fault(self) -> str:
        with self.lock:
            fault = self.schedule[self.chats % len(self.schedule)]
            self.chats += 1
            if fault != "pass":
                self.injected[fault] += 1
            return fault


class _Handler(BaseHTTPRequestHandler):
    server: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        """Quiet."""

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        self._handle(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _handle(self, body: bytes) -> None:
        proxy = self.server
        with proxy.lock:
            proxy.headers_seen.append(str(self.headers))
        if proxy.token and self.headers.get("Authorization") != f"Bearer {proxy.token}":
            return self._reply(401, b'{"error": {"message": "Invalid API key", "type": "authentication_error"}}')
        fault = proxy.next_fault() if self.path == CHAT_ROUTE else "pass"
        if fault == "429":
            return self._reply(429, b'{"error": "too many requests"}', {"Retry-After": "1"})
        if fault == "503":
            return self._reply(503, b'{"error": "overloaded"}')
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return self.connection.close()
        if fault == "stall":
            time.sleep(proxy.stall)
            self.close_connection = True
            return None
        if fault == "garbage":
            return self._reply(200, b"<html>502 upstream hiccup</html>")
        if fault in ("huge", "flood"):
            return self._endless(fault)
        status, headers, answer = self._forward(body)
        if self.path == CHAT_ROUTE and status == 200:
            with proxy.lock:
                proxy.forwarded.append(json.loads(body))
            if fault == "empty":
                data = json.loads(answer)
                data["choices"][0]["message"]["content"] = ""
                answer = json.dumps(data).encode()
            if fault == "drip":
                return self._drip(answer)
        return self._reply(status, answer, {k: v for k, v in headers if k.lower() == "content-type"})

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = self.server.upstream
        connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=600)
        try:
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _drip(self, answer: bytes) -> None:
        """The real answer, one byte every `drip` seconds (each read is quick; the whole is not)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        try:
            for index in range(len(answer)):
                self.wfile.write(answer[index : index + 1])
                self.wfile.flush()
                time.sleep(self.server.drip)
        except (BrokenPipeError, ConnectionResetError):
            with self.server.lock:
                self.server.hung_up["drip"] += 1
        self.close_connection = True

    def _endless(self, fault: str) -> None:
        """A chat answer of `HUGE` bytes, its length declared (`huge`) or chunked (`flood`), until the client
        hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if fault == "huge":
            self.send_header("Content-Length", str(HUGE))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        start, chunk = b'{"choices": [{"message": {"role": "assistant", "content": "', b"a" * 65536
        sent = 0
        try:
            for part in [start] + [chunk] * (HUGE // len(chunk)):
                self.wfile.write(part if fault == "huge" else b"%x\r\n%s\r\n" % (len(part), part))
                sent += len(part)
        except (BrokenPipeError, ConnectionResetError):
            with self.server.lock:
                self.server.hung_up[fault] += 1
        with self.server.lock:
            self.server.endless_bytes += sent
        self.close_connection = True

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def fault_proxy(upstream: str, schedule: Sequence[str] = ("pass",), **options: object) -> Iterator[FaultProxy]:
    """Run a `FaultProxy` in a thread for the duration of the block."""
    proxy = FaultProxy(upstream, schedule, **options)  # type: ignore[arg-type]
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
