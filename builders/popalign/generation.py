"""What a strategy asks a backend for: chat requests, generation parameters, and their cache key."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

#: One chat message as (role, content); tuples keep requests hashable.
Message = tuple[str, str]


#: Default answer lengths: endpoints serve real models whose answers run long; the local default is what the
#: embedded demo can afford on two CPU cores while keeping cut answers (dropped as `truncated`) a minority.
ENDPOINT_MAX_NEW_TOKENS = 1024
LOCAL_MAX_NEW_TOKENS = 384


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings shared by every request of a run."""

    max_new_tokens: int = LOCAL_MAX_NEW_TOKENS
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0


#: Each setting's type and the range it must fall in, as told in errors.
_RANGES: dict[str, tuple[type, Callable[[float], bool], str]] = {
    "max_new_tokens": (int, lambda v: v >= 1, "a whole number >= 1"),
    "temperature": (float, lambda v: 0 <= v <= 100, "a number >= 0 (0 is greedy)"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "seed": (int, lambda v: v >= 0, "a whole number >= 0"),
}


def check_setting(name: str, value: object) -> int | float:
    """A generation setting (from a flag's text or a recipe's value) as its type, if in range; otherwise a
    `ValueError` saying what is expected."""
    kind, allowed, expected = _RANGES[name]
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise ValueError
        number = kind(value.strip() if isinstance(value, str) else value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {expected}, got {value!r}") from None
    if not math.isfinite(number) or not allowed(number):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return number


#: Why a generation ended: the model stopped by itself, or it hit `max_new_tokens` (the answer is cut).
STOP, LENGTH = "stop", "length"


@dataclass(frozen=True)
class Generation:
    """One answer, the number of tokens generated for it, and why it ended (`stop` or `length`)."""

    text: str
    tokens: int
    finish_reason: str = STOP

    @property
    def truncated(self) -> bool:
        """The answer stopped at the token limit, not at the model's own end."""
        return self.finish_reason == LENGTH


#: Called with each generation as soon as it exists, and on each retry of a request with what failed and the
#: seconds it waits before trying again.
OnDone = Callable[[Generation], None]
OnRetry = Callable[[str, float], None]


@dataclass(frozen=True)
class Request:
    """A chat to complete with the model behind `role`; `sample` tells apart repeated draws."""

    role: str
    messages: tuple[Message, ...]
    sample: int = 0

    def chat(self) -> list[dict[str, str]]:
        """The messages in the `[{role, content}]` form chat templates and APIs take."""
        return [{"role": role, "content": content} for role, content in self.messages]


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
    """Content address of one generation: backend, model, rendered messages, parameters, sample index.

    The role is left out on purpose: two roles served by the same model share their answers.
    """
    payload = {
        "backend": backend,
        "model": model,
        "messages": request.messages,
        "params": _params_payload(params),
        "sample": request.sample,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


@functools.cache
def _params_payload(params: GenerationParams) -> dict[str, Any]:
    """The parameters as a request key holds them, worked out once per parameter set (not once per request)."""
    return asdict(params)
