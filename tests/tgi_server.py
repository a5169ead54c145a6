"""A small HTTP server answering TGI's `/generate` (and `/`) with `details` and `decoder_input_details` in the
format TGI documents, from the embedded SmolLM2's own forward pass. TGI itself cannot run here.

It runs in a process of its own, as a real server does: `serve_tgi()` starts it and stops it.

    python tests/tgi_server.py --log requests.jsonl [--token T]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from net import JSONHandler


def tgi_answer(model: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    """TGI's answer to `{"inputs": text, "parameters": {"details": true, "decoder_input_details": true}}`:
    prefill tokens with their log-probabilities (the first has none), one generated token."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    prefill = [{"id": ids[0], "text": tokenizer.decode(ids[:1]), "logprob": None}]
    prefill += [
        {"id": token, "text": tokenizer.decode([token]), "logprob": logprobs[i - 1, token].item()}
        for i, token in enumerate(ids[1:], start=1)
    ]
    next_id = int(logprobs[-1].argmax())
    token = {
        "id": next_id,
        "text": tokenizer.decode([next_id]),
        "logprob": logprobs[-1, next_id].item(),
        "special": False,
    }
    return {
        "generated_text": token["text"],
        "details": {
            "finish_reason": "length",
            "generated_tokens": 1,
            "seed": None,
            "prefill": prefill,
            "tokens": [token],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True, help="append each request body here (JSON lines)")
    parser.add_argument("--token", help="answer 401 unless `Authorization: Bearer <token>`")
    options = parser.parse_args()

    from popalign.backends.local import LocalBackend
    from popalign.roles import ModelSpec

    model, tokenizer = LocalBackend().load(ModelSpec("smollm2"))
    lock = threading.Lock()

    class Handler(JSONHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:  # one forward pass at a time, as one model replica
                with options.log.open("a") as log:
                    log.write(json.dumps({"path": self.path, **body}) + "\n")
                if options.token and self.headers.get("Authorization") != f"Bearer {options.token}":
                    return self._reply(401, {"error": "Authorization header is correct, but the token seems invalid"})
                if self.path not in ("/", "/generate"):
                    return self._reply(404, {"error": f"no route {self.path}"})
                answer = tgi_answer(model, tokenizer, body["inputs"])
            self._reply(200, answer)

    ThreadingHTTPServer.request_queue_size = 128  # the client opens up to 16 connections at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


@contextmanager
def serve_tgi(log: Path, *, token: str | None = None) -> Iterator[str]:
    """Start the server in its own process on a free loopback port; yield its URL. Requests land in `log`."""
    command = [sys.executable, __file__, "--log", str(log), *(["--token", token] if token else [])]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"TGI test server did not start (exit {server.poll()})"
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def received(log: Path) -> list[dict[str, Any]]:
    """The request bodies the server logged, each with its `path`."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


if __name__ == "__main__":
    main()
