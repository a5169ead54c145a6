"""A latency-simulating OpenAI-compatible server for the endpoint benchmark: every chat completion takes a fixed
delay, with unlimited parallelism; the answer is derived from the request so distinct requests differ.

    python bench/latency_server.py --port 8080 --delay 0.5
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


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ", 2)[1]
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            if path == "/v1/models":
                answer = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
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
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@contextmanager
def running(delay: float) -> Iterator[str]:
    """This server in its own process on a free loopback port, for the benchmarks: yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--delay", str(delay)])
    try:
        time.sleep(1.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


async def serve(port: int, delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, delay), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay))
