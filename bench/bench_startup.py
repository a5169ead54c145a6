"""Benchmark: start-up. Time from launch to the first request an endpoint build sends, next to a bare client
script sending the same kind of request, and `popalign --help` next to a bare `python -c pass`, all measured in
the same run.

A loopback OpenAI-compatible server in this process records when each launched command's first chat request
arrives. Each command runs `--repeats` times; the median is reported.

    python bench/bench_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

POPALIGN = Path(sys.executable).with_name("popalign")
BARE_CLIENT = """
import asyncio, sys
from huggingface_hub import AsyncInferenceClient

async def main():
    async with AsyncInferenceClient(base_url=sys.argv[1], api_key="") as client:
        await client.chat_completion([{"role": "user", "content": "Say hi."}], model="bench", max_tokens=16)

asyncio.run(main())
"""


class Handler(BaseHTTPRequestHandler):
    """Answers `/v1/models` and chat completions at once (each answer derived from its request, so the two sides of a
    pair differ); stamps the first chat request of each run."""

    first_chat: float | None = None

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "bench", "object": "model"}]})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if Handler.first_chat is None:
            Handler.first_chat = time.perf_counter()
        message = {"role": "assistant", "content": f"An answer ({hashlib.sha256(body).hexdigest()[:12]})."}
        choice = {"index": 0, "finish_reason": "stop", "message": message}
        usage = {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "bench", "choices": [choice],
                    "usage": usage})  # fmt: skip

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def to_first_request(command: list[str]) -> float:
    """Seconds from launching `command` to its first chat request (the command then runs to its end)."""
    Handler.first_chat = None
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    assert Handler.first_chat is not None, f"{command[0]} sent no chat request"
    return Handler.first_chat - started


def to_exit(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as folder:
        prompts = Path(folder) / "prompts.jsonl"
        prompts.write_text(json.dumps({"prompt": "Say hi."}) + "\n")
        build = [str(POPALIGN), "build", "--prompts", str(prompts), "--strategies", "prefix", "--model",
                 f"default={url}", "--no-cache", "--no-progress", "--out", str(Path(folder) / "out")]  # fmt: skip
        bare = [sys.executable, "-c", BARE_CLIENT, url]
        runs = {
            "endpoint build, to first request": [to_first_request(build) for _ in range(args.repeats)],
            "bare client script, to its request": [to_first_request(bare) for _ in range(args.repeats)],
            "popalign --help": [to_exit([str(POPALIGN), "--help"]) for _ in range(args.repeats)],
            "python -c pass": [to_exit([sys.executable, "-c", "pass"]) for _ in range(args.repeats)],
        }
    server.shutdown()
    median = {name: statistics.median(times) for name, times in runs.items()}
    print(f"{'run (median of ' + str(args.repeats) + ')':<38} {'seconds':>8}")
    for name, seconds in median.items():
        print(f"{name:<38} {seconds:>8.2f}")
    build_s, bare_s = median["endpoint build, to first request"], median["bare client script, to its request"]
    print(f"first request: popalign build {build_s:.2f} s vs bare client {bare_s:.2f} s = {build_s / bare_s:.2f}x")
    help_s, python_s = median["popalign --help"], median["python -c pass"]
    print(f"popalign --help: {help_s:.2f} s ({help_s / python_s:.1f}x a bare interpreter start)")


if __name__ == "__main__":
    main()
