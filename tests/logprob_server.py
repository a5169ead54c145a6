"""A small HTTP server that answers log-prob requests as TGI, vLLM or SGLang do, in the formats they document,
from the embedded SmolLM2's own forward pass (none of those servers can run here):

- TGI (`--kind tgi`): `GET /info`; `POST /generate` (and `/`) with `details` and `decoder_input_details`;
- vLLM (`--kind vllm`): `GET /version`, `GET /v1/models`; `POST /v1/completions` with `prompt_logprobs`;
- SGLang (`--kind sglang`): `GET /get_model_info`, `GET /v1/models`; `POST /generate` with `return_logprob`;
- TensorRT-LLM (`--kind trtllm`): `GET /version` as vLLM answers it, `owned_by: tensorrt_llm` in `/v1/models`.

Each tokenizes as its server does: TGI adds the tokenizer's special tokens to every input, SGLang to a `text` (its
`input_ids` it takes verbatim), vLLM unless `add_special_tokens` is false. `--model DIR` serves a model folder
instead (a tokenizer that adds a BOS token shows a doubled BOS).

Every kind also answers `POST /v1/chat/completions`: with `logprobs` and `top_logprobs`, the model's first
token after the chat template and its top log-probs, computed; without, `--reply` (a judge's reply that names no
letter, so that the judge falls back on log-probs).

`--fault` answers every log-prob request wrongly, as a broken or hostile server might: a log-prob that is NaN,
null, true or far above 0; one log-prob for the whole text; an answer padded past any sane size; or one dripped a
byte at a time. `--fail-first N` answers the first N log-prob requests 503.

It runs in a process of its own, as a real server does: `serve_logprobs()` starts it and stops it.

    python tests/logprob_server.py --kind vllm --log requests.jsonl [--token T] [--also NAME] [--fault F]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from net import JSONHandler

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
KINDS = ("tgi", "vllm", "sglang")
#: The GET routes each kind answers, besides `/v1/models` (which TGI answers too).
PROBES = {"tgi": "/info", "vllm": "/version", "sglang": "/get_model_info", "trtllm": "/version"}
OWNED_BY = {"tgi": MODEL_ID, "vllm": "vllm", "sglang": "sglang", "trtllm": "tensorrt_llm"}


def token_logprobs(model: Any, ids: list[int]) -> Any:
    """Log-softmax of the model's logits at every position of `ids` (row i predicts token i + 1)."""
    import torch

    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


#: `--fault` values that change the log-probs an answer carries: what the second position says instead.
VALUE_FAULTS = {"nan": float("nan"), "null": None, "true": True, "positive": 1e300}
FAULTS = (*VALUE_FAULTS, "one", "huge", "drip")
FAULT: list[str] = []  # the fault this server answers with, set by `main`


def prompt_entries(model: Any, tokenizer: Any, text: str | list[int], special: bool) -> list[tuple[int, Any]]:
    """Each token of `text` (tokenized with the special tokens where `special`, or given as ids) with its
    log-probability given the ones before it (the first has none); under `--fault`, the wrong ones."""
    ids = text if isinstance(text, list) else tokenizer(text, add_special_tokens=special)["input_ids"]
    logprobs = token_logprobs(model, ids)
    entries = [(ids[0], None), *((token, logprobs[i - 1, token].item()) for i, token in enumerate(ids[1:], start=1))]
    if FAULT and FAULT[0] in VALUE_FAULTS:
        entries[1] = (entries[1][0], VALUE_FAULTS[FAULT[0]])
    return entries[:2] if FAULT == ["one"] else entries


def tgi_answer(model: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    """TGI's answer to `/generate` with `details` and `decoder_input_details`: prefill tokens with their
    log-probabilities (the first has none), one generated token."""
    entries = prompt_entries(model, tokenizer, text, special=True)  # TGI cannot be told not to
    prefill = [{"id": token, "text": tokenizer.decode([token]), "logprob": value} for token, value in entries]
    token = {"id": entries[-1][0], "text": tokenizer.decode([entries[-1][0]]), "logprob": 0.0, "special": False}
    details = {"finish_reason": "length", "generated_tokens": 1, "seed": None, "prefill": prefill, "tokens": [token]}
    return {"generated_text": token["text"], "details": details}


def vllm_answer(model: Any, tokenizer: Any, body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's completions answer with `prompt_logprobs: 0`: per prompt position after the first, a map from the
    prompt token's id to its log-prob, rank and text."""
    entries = prompt_entries(model, tokenizer, body["prompt"], special=body.get("add_special_tokens", True))
    prompt_logprobs = [
        None
        if value is None
        else {str(token): {"logprob": value, "rank": 1, "decoded_token": tokenizer.decode([token])}}
        for token, value in entries
    ]
    choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": "length", "prompt_logprobs": prompt_logprobs}
    usage = {"prompt_tokens": len(entries), "completion_tokens": 1, "total_tokens": len(entries) + 1}
    return {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": [choice], "usage": usage}


def sglang_answer(model: Any, tokenizer: Any, body: dict[str, Any]) -> dict[str, Any]:
    """SGLang's `/generate` answer with `return_logprob` and `logprob_start_len: 0`: `[logprob, id, None]` for
    each input token."""
    entries = prompt_entries(model, tokenizer, body.get("input_ids") or body["text"], special=True)
    meta = {"prompt_tokens": len(entries), "completion_tokens": 1,
            "input_token_logprobs": [[value, token, None] for token, value in entries]}  # fmt: skip
    return {"text": "", "meta_info": meta}


def chat_answer(model: Any, tokenizer: Any, body: dict[str, Any], reply: str, served: str) -> dict[str, Any]:
    """A chat completion: with `logprobs`, the greedy first token and the top `top_logprobs` log-probs there, as
    OpenAI's format has them; without, `reply`."""
    message = {"role": "assistant", "content": reply}
    logprobs = None
    if body.get("logprobs"):
        text = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        last = token_logprobs(model, tokenizer(text, add_special_tokens=False)["input_ids"])[-1]
        values, ids = last.topk(int(body.get("top_logprobs") or 1))
        pairs = zip(values.tolist(), ids.tolist(), strict=True)
        top = [{"token": tokenizer.decode([i]), "logprob": value, "bytes": None} for value, i in pairs]
        message["content"] = top[0]["token"]
        logprobs = {"content": [{**top[0], "top_logprobs": top}]}
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "length"}
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": served, "choices": [choice],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=(*KINDS, "trtllm"), required=True)
    parser.add_argument("--model", default="smollm2", help="the model spec it computes with (default: SmolLM2)")
    parser.add_argument("--weights", default="v1", help="what it says of its weights")
    parser.add_argument("--log", type=Path, required=True, help="append each request here (JSON lines)")
    parser.add_argument("--token", help="answer 401 unless `Authorization: Bearer <token>`")
    parser.add_argument("--also", action="append", default=[], help="another model /v1/models lists (repeatable)")
    parser.add_argument("--reply", default="Both answers have merits.", help="a chat reply without log-probs")
    parser.add_argument("--fault", choices=FAULTS, help="answer every log-prob request wrongly, this way")
    parser.add_argument("--fail-first", type=int, default=0, help="answer the first N log-prob requests 503")
    options = parser.parse_args()
    FAULT.extend([options.fault] if options.fault else [])
    failing = [options.fail_first]

    from popalign.backends.local import LocalBackend
    from popalign.roles import ModelSpec

    model, tokenizer = LocalBackend().load(ModelSpec.parse(options.model))
    lock = threading.Lock()
    kind, served = options.kind, (MODEL_ID, *options.also)

    class Handler(JSONHandler):
        def _refused(self, record: dict[str, Any]) -> bool:
            with lock, options.log.open("a") as log:
                log.write(json.dumps(record) + "\n")
            if options.token and self.headers.get("Authorization") != f"Bearer {options.token}":
                self._reply(401, {"error": "Authorization header is correct, but the token seems invalid"})
                return True
            return False

        def do_GET(self) -> None:
            if self._refused({"method": "GET", "path": self.path}):
                return
            if self.path == "/v1/models":
                listed = [{"id": name, "object": "model", "owned_by": OWNED_BY[kind]} for name in served]
                for entry in listed if kind == "vllm" else ():
                    entry["root"] = f"/srv/{options.weights}/{entry['id']}"
                return self._reply(200, {"object": "list", "data": listed})
            if self.path != PROBES[kind]:
                return self._reply(404, {"error": f"no route {self.path}"})
            info = {"tgi": {"model_id": MODEL_ID, "model_sha": options.weights}, "vllm": {"version": "0.11.0"},
                    "sglang": {"model_path": MODEL_ID, "is_generation": True, "weight_version": options.weights},
                    "trtllm": {"version": "1.2.0"}}  # fmt: skip
            self._reply(200, info[kind])

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self._refused({"method": "POST", "path": self.path, **body}):
                return
            routes = {"tgi": ("/", "/generate"), "vllm": ("/v1/completions",), "sglang": ("/generate",)}
            needed = {"tgi": "inputs", "vllm": "prompt", "sglang": "text"}.get(kind, "")
            if kind == "sglang" and "input_ids" in body:
                needed = "input_ids"
            if kind == "trtllm":
                return self._reply(404, {"error": f"no route {self.path}"})
            if self.path in routes[kind] and needed not in body:  # as the servers' request validation does
                return self._reply(422, {"error": f"Failed to deserialize the JSON body: missing field `{needed}`"})
            with lock:  # one forward pass at a time, as one model replica
                if self.path == "/v1/chat/completions":
                    answer = chat_answer(model, tokenizer, body, options.reply, body.get("model") or MODEL_ID)
                elif self.path not in routes[kind]:
                    return self._reply(404, {"error": f"no route {self.path}"})
                elif kind == "vllm" and body.get("model") not in served:
                    return self._reply(404, {"error": f"The model `{body.get('model')}` does not exist."})
                elif kind == "tgi":
                    answer = tgi_answer(model, tokenizer, body["inputs"])
                elif kind == "vllm":
                    answer = vllm_answer(model, tokenizer, body)
                else:
                    answer = sglang_answer(model, tokenizer, body)
                if self.path != "/v1/chat/completions" and failing[0] > 0:
                    failing[0] -= 1
                    return self._reply(503, {"error": "Model is overloaded"})
            if FAULT == ["huge"]:
                answer["padding"] = "x" * 5_000_000
            if FAULT == ["drip"] and self.path != "/v1/chat/completions":
                return self._drip(json.dumps(answer).encode())
            self._reply(200, answer)

        def _drip(self, data: bytes) -> None:
            """The answer one byte every tenth of a second: never still for long, never done in time."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)

    ThreadingHTTPServer.request_queue_size = 128  # the client opens up to 16 connections at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


@contextmanager
def serve_logprobs(
    log: Path,
    kind: str = "tgi",
    *,
    token: str | None = None,
    also: tuple[str, ...] = (),
    model: str = "smollm2",
    fault: str | None = None,
    fail_first: int = 0,
) -> Iterator[str]:
    """Start the server in its own process on a free loopback port; yield its URL. Requests land in `log`."""
    command = [sys.executable, __file__, "--kind", kind, "--log", str(log), *(["--token", token] if token else [])]
    command += ["--model", model, "--fail-first", str(fail_first), *(["--fault", fault] if fault else [])]
    command += [flag for name in also for flag in ("--also", name)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"log-prob test server did not start (exit {server.poll()})"
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def received(log: Path) -> list[dict[str, Any]]:
    """The requests the server logged, each with its `method` and `path` (and a POST's body)."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


if __name__ == "__main__":
    main()
