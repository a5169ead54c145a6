"""What a strategy asks a backend for: chat requests, generation parameters, and their cache key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

#: One chat message as (role, content); tuples keep requests hashable.
Message = tuple[str, str]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings shared by every request of a run."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0


@dataclass
class Generation:
    """One answer and the number of tokens generated for it."""

    text: str
    tokens: int


#: Called with each generation as soon as it exists, and on each retry of a request.
OnDone = Callable[[Generation], None]
OnRetry = Callable[[], None]


@dataclass(frozen=True)
class Request:
    """A chat to complete with the model behind `role`; `sample` tells apart repeated draws."""

    role: str
    messages: tuple[Message, ...]
    sample: int = 0

    def chat(self) -> list[dict[str, str]]:
        """The messages in the `[{role, content}]` form chat templates and APIs take."""
        return [{"role": role, "content": content} for role, content in self.messages]


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
        "params": asdict(params),
        "sample": request.sample,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
