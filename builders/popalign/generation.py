"""What a strategy asks a backend for: chat requests, their generation settings (declared as every user setting is,
`popalign.declarations`), and their cache key."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from popalign.conversations import Message, as_chat
from popalign.declarations import NON_NEGATIVE, POSITIVE, STOPS, TEMPERATURE, Check, check_fields, setting
from popalign.errors import ConfigError
from popalign.shapes import Shape

#: Default answer lengths: endpoints serve real models whose answers run long; the local default is what the
#: embedded demo can afford on two CPU cores while keeping cut answers (dropped as `truncated`) a minority.
ENDPOINT_MAX_NEW_TOKENS = 1024
LOCAL_MAX_NEW_TOKENS = 384
_WORD = re.compile(r"[a-z]*")


def _extra_body(value: Any) -> str:
    """Request fields as canonical JSON text (a frozen setting, hashable), from JSON text or a mapping; none of
    `RESERVED_FIELDS`."""
    body = json.loads(value) if isinstance(value, str) and value.strip() else value or {}
    if not isinstance(body, Mapping):
        raise ValueError
    reserved = [key for key in body if key in RESERVED_FIELDS]
    if reserved:
        raise ConfigError(f"extra_body: {reserved[0]!r} is set by popalign (or by a setting of its own), not here")
    return json.dumps(body, sort_keys=True, separators=(",", ":")) if body else ""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of the requests of a run (or of one role)."""

    max_new_tokens: int = setting(
        LOCAL_MAX_NEW_TOKENS,
        check=POSITIVE,
        help=f"tokens per answer (default: {LOCAL_MAX_NEW_TOKENS} for local models, {ENDPOINT_MAX_NEW_TOKENS} for "
        "endpoints); an answer cut at the limit drops its pair as truncated",
    )
    temperature: float = setting(
        0.7,
        check=TEMPERATURE,
        help="sampling temperature; 0 is greedy",
    )
    top_p: float = setting(
        0.9,
        check=Check(float, "a number in (0, 1]", lambda value: 0 < value <= 1, metavar="P"),
        help="nucleus sampling mass",
    )
    seed: int = setting(0, check=NON_NEGATIVE, help="sampling and principle-choice seed")
    repetition_penalty: float = setting(
        1.0,
        check=Check(float, "a number in (0, 10] (1 is off)", lambda value: 0 < value <= 10, metavar="X"),
        help="divide the odds of every token already in the prompt or the answer by this (TGI, vLLM, "
        "transformers; 1 is off)",
    )
    frequency_penalty: float = setting(
        0.0,
        check=Check(float, "a number in [-2, 2] (0 is off)", lambda value: -2 <= value <= 2, metavar="X"),
        help="lower each token's logit by this times its count in the answer so far (OpenAI, vLLM; 0 is off)",
    )
    presence_penalty: float = setting(
        0.0,
        check=Check(float, "a number in [-2, 2] (0 is off)", lambda value: -2 <= value <= 2, metavar="X"),
        help="lower the logit of every token already in the answer by this (OpenAI, vLLM; 0 is off)",
    )
    top_k: int = setting(
        0,
        check=NON_NEGATIVE,
        help="sample from the K likeliest tokens only (TGI, vLLM, SGLang, transformers, llama.cpp; 0 is off)",
    )
    min_p: float = setting(
        0.0,
        check=Check(float, "a number in [0, 1) (0 is off)", lambda value: 0 <= value < 1, metavar="P"),
        help="drop tokens less likely than this share of the likeliest one (vLLM, SGLang, transformers; 0 is off)",
    )
    stop: tuple[str, ...] = setting(
        (),
        check=STOPS,
        repeat=True,
        help="a stop sequence: the answer ends before it (repeatable, up to 4, as OpenAI allows)",
    )
    reasoning_effort: str = setting(
        "",
        check=Check(str, "a word such as none, low, medium or high", lambda value: bool(_WORD.fullmatch(value))),
        metavar="EFFORT",
        help="how long a reasoning model thinks: none, minimal, low, medium, high, ... as the server names them "
        "(OpenAI, vLLM, SGLang, llama.cpp's server; endpoints only; sent only where set)",
    )
    thinking_budget: int = setting(
        0,
        check=NON_NEGATIVE,
        help="the most reasoning tokens a thinking model may spend, within --max-new-tokens, which counts thinking "
        "and answer together (vLLM's thinking_token_budget; endpoints only; 0 is off)",
    )
    extra_body: str = setting(
        "",
        check=Check(str, "a JSON object of request fields popalign does not set itself", convert=_extra_body),
        metavar="JSON",
        help="more fields for an endpoint's chat requests, as the server names them, e.g. "
        '\'{"chat_template_kwargs": {"enable_thinking": false}}\' (Qwen3 on vLLM or SGLang answers without '
        "thinking); a mapping under generation: in a recipe; endpoints only; recorded and part of the cache key",
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def extras(self) -> dict[str, Any]:
        """The settings beyond the basics (tokens, temperature, top-p, seed) that this run sets, not at their off
        value, by name (a list of stop sequences as a list): what an endpoint request carries besides the basics,
        and what a cache key holds only when set.

        >>> GenerationParams(min_p=0.05, stop=("User:",)).extras()
        {'min_p': 0.05, 'stop': ['User:']}
        """
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, off in OFF_VALUES.items()
            if (value := getattr(self, name)) != off
        }

    def recorded(self) -> dict[str, Any]:
        """Every setting, as the manifest and the recipe hold them (lists for YAML and JSON alike, the extra body a
        mapping)."""
        values = {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}
        return values | {"extra_body": json.loads(self.extra_body or "{}")}

    def endpoint_only(self) -> list[str]:
        """The settings this run sets that only an endpoint is sent (a local model has no such setting)."""
        return [name for name in ENDPOINT_ONLY if getattr(self, name) != OFF_VALUES[name]]


#: The generation settings that are off at these values, and left out of requests and cache keys when off (so
#: answers cached before the settings existed stay found).
OFF_VALUES: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "top_k": 0,
    "min_p": 0.0,
    "stop": (),
    "reasoning_effort": "",
    "thinking_budget": 0,
    "extra_body": "",
}
#: The generation settings only endpoints are sent.
ENDPOINT_ONLY = ("reasoning_effort", "thinking_budget", "extra_body")
#: Request fields popalign sets itself (or by a setting of its own), which `extra_body` may not set.
RESERVED_FIELDS = (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stream", "n",
    "logprobs", "top_logprobs", *(name for name in OFF_VALUES if name != "extra_body"), "thinking_token_budget",
)  # fmt: skip

#: Why a generation ended: the model stopped by itself, it hit `max_new_tokens` (the answer is cut), or it ended
#: while still thinking (the limit hit inside its reasoning trace, or a trace never closed: there is no answer).
STOP, LENGTH, THINKING = "stop", "length", "thinking"


@dataclass(frozen=True)
class Generation:
    """One answer, the number of tokens generated for it (its reasoning's included), why it ended (`stop`,
    `length` or `thinking`), the number of tokens of the prompt it answered (the endpoint's `usage`, or counted by
    the local model's tokenizer), the model's reasoning trace where it gave one apart from the answer (a server's
    reasoning field, or a think block that `popalign.reasoning` took out of the text), and how many of the tokens
    were reasoning where the server says so."""

    text: str
    tokens: int
    finish_reason: str = STOP
    prompt_tokens: int = 0
    reasoning: str = ""
    reasoning_tokens: int = 0

    @property
    def truncated(self) -> bool:
        """The answer stopped at the token limit, not at the model's own end."""
        return self.finish_reason == LENGTH

    @property
    def unfinished_thinking(self) -> bool:
        """The generation ended inside its reasoning trace: it has no answer."""
        return self.finish_reason == THINKING


#: Called with each generation as soon as it exists, and on each retry of a request with what failed and the
#: seconds it waits before trying again.
OnDone = Callable[[Generation], None]
OnRetry = Callable[[str, float], None]


@dataclass(frozen=True)
class Request:
    """A chat to complete with the model behind `role`; `sample` tells apart repeated draws, and `params` are
    generation settings of this request alone, over the role's (the temperature contrast's two temperatures, a
    ranker's short greedy rating); `shape` asks for an answer in a shape popalign parses (`popalign.shapes`), which
    a backend that can constrain its answer keeps to."""

    role: str
    messages: tuple[Message, ...]
    sample: int = 0
    params: tuple[tuple[str, Any], ...] = ()
    shape: Shape | None = None

    def settings(self, role_params: GenerationParams) -> GenerationParams:
        """The settings this request runs with: the role's, with the request's own over them."""
        return replace(role_params, **dict(self.params)) if self.params else role_params

    def chat(self) -> list[dict[str, str]]:
        """The messages in the `[{role, content}]` form chat templates and APIs take."""
        return as_chat(self.messages)


def system(content: str) -> Message:
    """A system message."""
    return ("system", content)


def user(content: str) -> Message:
    """A user message."""
    return ("user", content)


def assistant(content: str) -> Message:
    """An assistant message."""
    return ("assistant", content)


def request_key(backend: str, model: str, request: Request, params: GenerationParams) -> str:
    """Content address of one generation: backend, model, rendered messages, parameters, sample index, and the
    shape asked for where one is (so a key from before shapes existed still finds its answer).

    The role is left out on purpose: two roles served by the same model share their answers.
    """
    payload = {
        "backend": backend,
        "model": model,
        "messages": request.messages,
        "params": _params_payload(params),
        "sample": request.sample,
    }
    if request.shape:
        payload["shape"] = request.shape.schema_text
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


@functools.cache
def _params_payload(params: GenerationParams) -> dict[str, Any]:
    """The parameters as a request key holds them, worked out once per parameter set (not once per request): the
    extras only where set, so a key from before they existed still finds its answer."""
    plain = {name: value for name, value in asdict(params).items() if name not in OFF_VALUES}
    return plain | params.extras()


def chat_prompt(tokenizer: Any, chat: list[dict[str, str]]) -> str:
    """A chat as a local model reads it (its chat template): the generation prompt after the last turn, or, when
    the chat ends in an assistant turn (a prefill), that turn left open for the model to continue."""
    prefilled = bool(chat) and chat[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        chat, add_generation_prompt=not prefilled, continue_final_message=prefilled, tokenize=False
    )


def before_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text up to the first stop sequence in it (which the local engines leave in), and whether one was there.

    >>> before_stop("Blue.\\nUser: and", ["User:"]), before_stop("Blue.", [])
    (('Blue.\\n', True), ('Blue.', False))
    """
    found = [index for stop in stops if (index := text.find(stop)) >= 0]
    return (text[: min(found)], True) if found else (text, False)
