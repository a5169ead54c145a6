"""A latency-simulating OpenAI-compatible server for the endpoint benchmarks: every chat completion takes a fixed
delay, with unlimited parallelism; the answer is derived from the request so distinct requests differ. With
`--rps R`, a hosted API's rate limit: a token bucket of R requests a second (holding one second's worth) lets a
request through or answers it HTTP 429 with `Retry-After: 1`; `GET /stats` counts both.

    python bench/latency_server.py --port 8080 --delay 0.5 [--rps 50]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

MODEL = "latency-sim"


class Bucket:
    """`rate` requests a second, holding one second's worth: what is let through, and what is refused."""

    def __init__(self, rate: float | None) -> None:
        self.rate, self.level, self.at = rate, rate or 0.0, time.monotonic()
        self.passed = self.refused = 0

    def admit(self) -> bool:
        if self.rate is None:
            self.passed += 1
            return True
        now = time.monotonic()
        self.level, self.at = min(self.rate, self.level + (now - self.at) * self.rate), now
        if self.level >= 1:
            self.level -= 1
            self.passed += 1
            return True
        self.refused += 1
        return False


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, bucket: Bucket) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ", 2)[1]
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            status = b"200 OK"
            if path == "/v1/models":
                answer = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
            elif path == "/stats":
                answer = {"passed": bucket.passed, "refused": bucket.refused}
            elif not bucket.admit():
                status, answer = b"429 Too Many Requests\r\nRetry-After: 1", {"error": {"message": "rate limited"}}
            else:
                await asyncio.sleep(delay)
                digest = hashlib.sha256(body).hexdigest()[:16]
                answer = {
                    "id": digest,
                    "object": "chat.completion",
                    "created": 0,
                    "model": MODEL,
                    "system_fingerprint": "sim",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"Answer {digest}: plan, then write."},
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
                }
            data = json.dumps(answer).encode()
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@contextmanager
def running(delay: float, rps: float | None = None) -> Iterator[str]:
    """This server in its own process on a free loopback port, for the benchmarks: yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    limit = ["--rps", str(rps)] if rps else []
    server = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--delay", str(delay), *limit])
    try:
        time.sleep(1.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


async def serve(port: int, delay: float, rps: float | None) -> None:
    bucket = Bucket(rps)
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay, bucket), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--rps", type=float, default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay, args.rps))
