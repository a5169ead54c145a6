"""What a strategy asks a backend for: chat requests, generation parameters, and their cache key."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from popalign.config import OFF_VALUES, GenerationParams
from popalign.conversations import Message, as_chat
from popalign.shapes import Shape

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
