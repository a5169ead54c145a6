"""A scripted OpenAI-compatible chat server for the pair-assembly tests: every answer is fixed in advance by a
tag in the instruction (`[cut-plan]`, `[near-copy]`, ...) and by which step of a strategy is asking, so each drop
reason happens a known number of times. It logs every chat request it answers as one JSON line.

The steps are told apart by the markers of the test's own templates (`tests/scripted_templates/`): `PLAN-GOOD`,
`PLAN-BAD` (elicitive plans), `GUIDE` (an answer written with a plan as guidance), `PAPER-GOOD`, `PAPER-BAD`
(the paper's single-turn template). A lone one-line user message is the plain instruction, M(q); any other chat
(a principle prefix, demonstrations) gets an answer derived from its whole text.

    python tests/scripted_server.py --port 8080 --model scripted-default --log requests.jsonl [--delay 0.05]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from net import JSONHandler

TAG = re.compile(r"\[([a-z-]+)\]")
#: How each server kind (`--kind`) fills `owned_by` in `/v1/models` (TGI writes its model id there).
OWNED_BY = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llamacpp", "openai": "openai", "trtllm": "tensorrt_llm"}
#: What each kind's sampler uses for a setting the request leaves out, and which request fields it reads (any other
#: is ignored, with HTTP 200): vLLM and SGLang the model's `generation_config.json` (here Qwen3's), llama.cpp's server
#: its own defaults; TGI's chat route reads only these fields.
SAMPLER_DEFAULTS = {
    "vllm": {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0, "repetition_penalty": 1.0,
             "presence_penalty": 0.0, "frequency_penalty": 0.0},
    "llamacpp": {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0,
                 "presence_penalty": 0.0, "frequency_penalty": 0.0},
    "tgi": {"temperature": 1.0, "top_p": 1.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0},
}  # fmt: skip
SAMPLER_DEFAULTS["sglang"] = SAMPLER_DEFAULTS["vllm"]
#: The request fields OpenAI's chat completions take (any other is refused with HTTP 400).
OPENAI_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop",
                 "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "response_format",
                 "reasoning_effort", "n", "stream"}  # fmt: skip
PLAIN = "A plain answer that restates the request, explains it in full and gives an example of it for {tag}."


def sampled(seed: int) -> int:
    """Which answer a `[sampled]` instruction's draw gets, by its sampling seed (each draw asks with its own)."""
    return seed % 97


def rating(number: int, tag: str) -> str:
    """The ranker's reply to the `[sampled]` answer `number`: a rating from 1 to 10 it fixes, or none (`[unrated]`),
    or one for all (`[tied]`)."""
    return "I cannot tell." if tag == "unrated" else "Rating: 5" if tag == "tied" else f"Rating: {number % 10 + 1}/10"


def reply(
    messages: list[dict[str, str]], seed: int = 0, temperature: float = 0.0, model: str = "scripted"
) -> tuple[int, str, str]:
    """(HTTP status, answer, finish reason) for one chat, by the instruction's tag and the step asking; a plain
    instruction tagged `[sampled]`, `[unrated]` or `[tied]` is answered by the model, its draw's seed and
    temperature."""
    text = "\n".join(message["content"] for message in messages)
    tagged = TAG.search(text)
    tag = tagged.group(1) if tagged else "ok"
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    last = messages[-1]["content"]
    if last.startswith("Rate the response"):  # the bestofn ranker: the answer's number fixes its rating
        number = re.search(r"Answer number (\d+)", last)
        return 200, rating(int(number[1]) if number else 0, tag), "stop"
    if last.startswith(("CONCISE-SHORT", "CONCISE-PADDED")):  # the plugin strategy of tests/plugin
        padded = last.startswith("CONCISE-PADDED") or tag == "not-shorter"
        return 200, f"Tides follow the moon{', and so on and so forth, as said' * 3 if padded else ''}.", "stop"
    if tag in ("sampled", "unrated", "tied") and len(messages) == 1 and "\n" not in last:
        return 200, f"Answer number {sampled(seed)} by {model} at temperature {temperature} about {tag}.", "stop"
    if "[Response A]" in last:  # the pairwise judge: by tag, right, wrong, led by position, mute or refusing
        first = last.split("[Response A]")[1].split("[End of Response A]")[0]
        if tag == "eval":  # `popalign evaluate`'s judge: the longer answer wins, and answers as long tie
            second = last.split("[Response B]")[1].split("[End of Response B]")[0]
            return 200, f"Judgement.\n{'B' if len(second.strip()) > len(first.strip()) else 'A'}", "stop"
        if tag == "judge-refused":
            return 400, "this judge refuses", ""
        if tag == "judge-mute":
            return 200, "Both answers have merits.", "stop"
        if tag == "judge-first":
            return 200, "The first one.\nA", "stop"
        better = "vague" if tag == "judge-wrong" else "careful"
        return 200, f"Judgement.\n{'A' if better in first else 'B'}", "stop"
    if last.startswith(("PLAN-GOOD", "PLAN-BAD")):
        good = last.startswith("PLAN-GOOD")
        plan = f"- {'Be exact and complete' if good else 'Be vague and skip steps'} about {tag}."
        if tag == "cut-plan" and good:
            return 200, plan, "length"
        if tag == "empty-plan" and not good:
            return 200, "", "stop"
        if tag == "plan-is-answer" and good:
            return 200, PLAIN.format(tag=tag), "stop"
        return 200, plan, "stop"
    if system.startswith("GUIDE"):
        good = "exact and complete" in system
        if tag == "refused":
            return 400, "prompt too long", ""
        if tag == "near-copy" and good:
            return 200, system.removeprefix("GUIDE").strip(), "stop"
        if tag == "identical":
            return 200, "The same answer.", "stop"
        if tag == "cut-answer" and not good:
            return 200, "A weak answer that stops in the mid", "length"
        if tag == "empty-answer" and not good:
            return 200, "", "stop"
        return 200, f"{'A careful, complete' if good else 'A vague'} answer about {tag}.", "stop"
    if last.startswith(("PAPER-GOOD", "PAPER-BAD")):
        good = last.startswith("PAPER-GOOD")
        if tag == "unparsed" and not good:
            return 200, "Just an answer without the format.", "stop"
        thought = "State the facts in order." if good else "Leave out what matters."
        return 200, f"Thought: {thought}\nResponse: {'A full' if good else 'A thin'} answer about {tag}.", "stop"
    if len(messages) == 1 and "\n" not in last:  # the plain instruction, M(q)
        return 200, PLAIN.format(tag=tag), "stop"
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    shaped = f"An answer shaped by its context ({digest}) about {tag}."
    if tag == "preamble" and any(message["role"] == "assistant" for message in messages):  # refine's revision
        return 200, f"Here's a rewritten version with the requested improvements:\n\n{shaped}", "stop"
    return 200, shaped, "stop"


def usage(messages: list[dict[str, str]], answer: str) -> dict[str, int]:
    """The token counts it reports: a word is a token, and each message costs 3 more (its role and delimiters)."""
    prompt = sum(len(message["content"].split()) + 3 for message in messages)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": len(answer.split()),
        "total_tokens": prompt + len(answer.split()),
    }


#: How a thinking model's trace comes back, as each kind of server returns it: inside `content` as a leading think
#: block (vLLM or SGLang without a reasoning parser, llama.cpp's `--reasoning-format none`, TGI), with the opening tag
#: in the prompt (DeepSeek-R1's template: only `</think>` in `content`), or in a field of its own (`reasoning_content`:
#: SGLang, llama.cpp, DeepSeek; `reasoning`: vLLM since late 2025, OpenRouter).
REASONING_KINDS = ("content", "r1", "reasoning_content", "reasoning")


def thought(content: str) -> str:
    """The trace a thinking stand-in writes before an answer."""
    return f"The user wants an answer; let me plan it ({hashlib.sha256(content.encode()).hexdigest()[:6]})."


def thinking_message(kind: str, content: str, finish: str, cut: bool) -> tuple[dict[str, str | None], str]:
    """The message and finish reason a thinking server of `kind` returns for `content`; `cut`: the token limit is
    reached inside the trace (a split trace comes back with no content, an unsplit one with no closing tag)."""
    trace = thought(content)
    if kind in ("reasoning_content", "reasoning"):
        message = {"role": "assistant", "content": None if cut else content, kind: trace}
        return message, "length" if cut else finish
    if cut:
        return {"role": "assistant", "content": f"<think>\n{trace} And then"}, "length"
    opened = "" if kind == "r1" else "<think>\n"
    return {"role": "assistant", "content": f"{opened}{trace}\n</think>\n\n{content}"}, finish


#: The request fields it logs beside the messages, where a request carries them.
LOGGED = ("repetition_penalty", "frequency_penalty", "presence_penalty", "min_p", "stop", "top_p",
          "max_completion_tokens", "reasoning_effort", "thinking_token_budget", "chat_template_kwargs",
          "response_format")  # fmt: skip


class Handler(JSONHandler):
    model = "scripted"
    also: tuple[str, ...] = ()  # more models it lists: then each answer starts with the model asked for
    log: Path
    delay = 0.0
    refuse: tuple[str, ...] = ()  # request fields it does not take, as OpenAI's API refuses an unknown one
    reasoning = ""  # one of REASONING_KINDS: a thinking model, its trace returned that way
    #: Behave as OpenAI's reasoning models do: refuse `max_tokens` (asking for `max_completion_tokens`), `top_p` and
    #: a temperature other than 1, and count reasoning tokens in `usage.completion_tokens_details`.
    openai_reasoning = False
    #: What it does with a `response_format` (a JSON schema): `accept` it (its answer comes as that JSON object),
    #: `refuse` it (HTTP 400, as a server that takes none), or ignore it (the default: a free-text answer).
    shapes = ""
    #: Which server it answers as (`OWNED_BY`, or `tgi`): its routes, `owned_by`, what it says of its weights, the
    #: request fields its sampler reads and its defaults; "" for a plain OpenAI-compatible server.
    kind = ""
    weights = ""  # the weights it serves: what it reports of them, and each answer ends by naming them

    def do_GET(self) -> None:
        digest = hashlib.sha1(self.weights.encode()).hexdigest()
        if self.path.endswith("/info") and self.kind == "tgi":
            info = {"model_id": self.model, "model_sha": digest, "router": "text-generation-router", "version": "3.3.6"}
            return self._reply(200, info)
        if self.path.endswith("/get_model_info") and self.kind == "sglang":
            return self._reply(200, {"model_path": self.model, "weight_version": self.weights or "default"})
        if not self.path.endswith("/models"):
            return self._reply(404, {"error": f"no route {self.path}"})
        models = [{"id": name, "object": "model"} for name in (self.model, *self.also)]
        for entry in models if self.kind else ():
            entry["owned_by"] = OWNED_BY.get(self.kind, entry["id"])
            if self.kind == "vllm":
                entry["root"] = f"/srv/models/{self.weights or 'base'}"
            if self.kind == "llamacpp":
                entry["meta"] = {"n_params": 135_000_000, "size": 90_000_000 + int(digest[:4], 16)}
        self._reply(200, {"object": "list", "data": models})

    def sampler(self, body: dict) -> dict | str:
        """What its sampler uses for a request, by its kind (`SAMPLER_DEFAULTS`): a field it reads where sent, its
        default where not; or why it refuses the request."""
        used = {name: body.get(name, default) for name, default in SAMPLER_DEFAULTS[self.kind].items()}
        if self.kind == "tgi":
            if not 0 < used["top_p"] < 1 and "top_p" in body:
                return "Input validation error: `top_p` must be > 0.0 and < 1.0"
            if body.get("presence_penalty"):  # TGI's chat route: a repetition penalty of it + 2
                used["repetition_penalty"] = body["presence_penalty"] + 2.0
        return used

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        asked = body.get("model")
        if self.also and asked not in (self.model, *self.also):
            self._reply(404, {"error": {"message": f"The model `{asked}` does not exist."}})
            return
        unknown = [name for name in self.refuse if name in body]
        if unknown:
            self._reply(400, {"error": {"message": f"Unrecognized request argument supplied: {unknown[0]}"}})
            return
        if self.shapes == "refuse" and "response_format" in body:
            self._log(body, asked, "")
            self._reply(400, {"error": {"message": "Unrecognized request argument supplied: response_format"}})
            return
        if self.kind == "openai" and (unknown := sorted(set(body) - OPENAI_FIELDS)):
            self._reply(400, {"error": _error(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0],
                                              "unrecognized_argument")})  # fmt: skip
            return
        sampled = self.sampler(body) if self.kind in SAMPLER_DEFAULTS else {}
        if isinstance(sampled, str):
            self._log(body, asked, "")
            self._reply(422, {"error": sampled, "error_type": "validation"})
            return
        if self.openai_reasoning and (refusal := openai_refusal(body)):
            self._log(body, asked, "")
            self._reply(400, {"error": refusal})
            return
        status, content, finish = reply(body["messages"], body.get("seed", 0), body.get("temperature", 0.0), self.model)
        if self.also:
            content = f"[{asked}] {content}"
        if self.weights and status == 200:
            content = f"{content} (weights {self.weights})"
        if self.shapes == "accept" and status == 200 and "response_format" in body:
            content = shaped(content, body["response_format"]["json_schema"]["name"])
        time.sleep(self.delay)
        self._log(body, asked, content, sampled)
        if status != 200:
            self._reply(status, {"error": {"message": content}})
            return
        message: dict[str, str | None] = {"role": "assistant", "content": content}
        counts = usage(body["messages"], content)
        if self.reasoning:
            cut = "[think-cut]" in body["messages"][-1]["content"]
            message, finish = thinking_message(self.reasoning, content, finish, cut)
            if self.openai_reasoning:  # OpenAI returns no text of the trace, only its token count
                message.pop(self.reasoning, None)
            thinking = len(thought(content).split())
            counts |= {"completion_tokens": counts["completion_tokens"] + thinking}
            counts |= {"completion_tokens_details": {"reasoning_tokens": thinking}}
        choice = {"index": 0, "finish_reason": finish, "message": message}
        if body.get("logprobs") and self.reasoning:  # a thinking model's first answer token opens its trace
            first = "<think>"
            top = [{"token": first, "logprob": -0.1}, {"token": "A", "logprob": -4.0}, {"token": "B", "logprob": -5.0}]
            choice["logprobs"] = {"content": [{"token": first, "logprob": -0.1, "top_logprobs": top}]}
        digest = hashlib.sha1(self.weights.encode()).hexdigest()[:10]  # OpenAI names its backend configuration
        fingerprint = {"system_fingerprint": f"fp_{digest}"} if self.kind == "openai" else {}
        self._reply(
            200,
            {
                "id": "scripted",
                "object": "chat.completion",
                "created": 0,
                "model": asked or self.model,
                "choices": [choice],
                "usage": counts,
                **fingerprint,
            },
        )

    def _log(self, body: dict, asked: str | None, content: str, sampled: dict | None = None) -> None:
        """One line per chat request: what it asked with, what its sampler used (by `--kind`), and the answer it
        got."""
        with self.log.open("a") as sink:
            entry = {"messages": body["messages"], "max_tokens": body.get("max_tokens"), "model": asked}
            entry |= {"seed": body.get("seed"), "temperature": body.get("temperature"), "answer": content}
            entry |= {key: body[key] for key in LOGGED if key in body} | ({"sampler": sampled} if sampled else {})
            sink.write(json.dumps(entry | {"authorization": self.headers.get("Authorization")}) + "\n")


def shaped(content: str, shape: str) -> str:
    """The answer as a server that constrains it to popalign's JSON shape gives it: a rating is always a number (an
    `[unrated]` reply gets 1), a verdict always ends in a letter."""
    if shape == "rating":
        number = re.search(r"(10|[1-9])", content)
        return json.dumps({"rating": int(number[1]) if number else 1})
    if shape == "verdict":
        *explanation, last = content.strip().splitlines() or [""]
        letter = last.strip() if last.strip() in ("A", "B") else "A"
        return json.dumps({"explanation": " ".join(explanation) or last, "better": letter})
    thought, _, response = content.partition("Response:")
    return json.dumps({"thought": thought.removeprefix("Thought:").strip(), "response": response.strip() or content})


def openai_refusal(body: dict) -> dict[str, str] | None:
    """The error OpenAI's reasoning models answer a request with, as they word it, or None where they take it."""
    if "max_tokens" in body:
        message = ("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
                   "instead.")  # fmt: skip
        return _error(message, "max_tokens", "unsupported_parameter")
    if "top_p" in body:
        message = "Unsupported parameter: 'top_p' is not supported with this model."
        return _error(message, "top_p", "unsupported_parameter")
    if body.get("temperature", 1) != 1:
        message = (f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. Only the "
                   "default (1) value is supported.")  # fmt: skip
        return _error(message, "temperature", "unsupported_value")
    return None


def _error(message: str, param: str, code: str) -> dict[str, str]:
    return {"message": message, "type": "invalid_request_error", "param": param, "code": code}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="scripted")
    parser.add_argument("--also", action="append", default=[], help="another model it lists (repeatable)")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--refuse", action="append", default=[], help="a request field it answers 400 to")
    parser.add_argument("--reasoning", choices=REASONING_KINDS, default="", help="a thinking model, its trace sent so")
    parser.add_argument("--openai-reasoning", action="store_true", help="refuse as OpenAI's reasoning models do")
    parser.add_argument("--shapes", choices=("accept", "refuse"), default="", help="what it does with response_format")
    parser.add_argument("--kind", choices=(*OWNED_BY, "tgi"), default="", help="the server it answers as")
    parser.add_argument("--weights", default="", help="the weights it serves (reported by kind; named in answers)")
    args = parser.parse_args()
    Handler.kind, Handler.weights = args.kind, args.weights
    Handler.shapes = args.shapes
    Handler.reasoning, Handler.openai_reasoning = args.reasoning, args.openai_reasoning
    Handler.model, Handler.also, Handler.log, Handler.delay = args.model, tuple(args.also), args.log, args.delay
    Handler.refuse = tuple(args.refuse)
    ThreadingHTTPServer.request_queue_size = 128  # the client opens up to --concurrency connections at once
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
