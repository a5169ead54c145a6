"""A small HTTP server answering TGI's `/generate` (and `/`) with `details` and `decoder_input_details` in the
format TGI documents, from a local transformers model's own forward pass. TGI itself cannot run here."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


def tgi_answer(model: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    """TGI's answer to `{"inputs": text, "parameters": {"details": true, "decoder_input_details": true}}`:
    prefill tokens with their log-probabilities (the first has none), one generated token."""
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


@contextmanager
def serve_tgi(model: Any, tokenizer: Any, *, token: str | None = None) -> Iterator[tuple[str, list[dict]]]:
    """Serve on a free loopback port; yield the URL and the list of request bodies received. With `token`,
    a request without `Authorization: Bearer <token>` gets a 401."""
    received: list[dict] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, **body})
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                return self._reply(401, {"error": "Authorization header is correct, but the token seems invalid"})
            if self.path not in ("/", "/generate"):
                return self._reply(404, {"error": f"no route {self.path}"})
            with lock:  # one forward pass at a time, as one model replica
                answer = tgi_answer(model, tokenizer, body["inputs"])
            self._reply(200, answer)

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
