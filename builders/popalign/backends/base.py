"""The contract every generation backend keeps: a name for cache keys, model identities, asynchronous answers
(see `popalign.engine`, which drives them), and the log-probs of short answers (a judge's letters)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from popalign.generation import Generation, GenerationParams, OnDone, OnRetry, Request
from popalign.model_identity import ModelIdentity

#: The one key of what `choice_logprobs` gives for a model whose first token opens a reasoning trace (its first
#: token says nothing of its answer).
THINKS_FIRST = "<think>"


class Backend(Protocol):
    """What the engine needs of a backend: a name for cache keys, model identities, and asynchronous answers."""

    name: str
    #: Whether a request's chat may end in an assistant turn for the model to continue (a prefill).
    prefills: bool

    async def identity(self, spec: Any) -> ModelIdentity: ...

    def submit(
        self, spec: Any, request: Request, params: GenerationParams, on_done: OnDone, on_retry: OnRetry
    ) -> Awaitable[Generation]:
        """Start answering `request`; call `on_done` with the generation as soon as it exists, `on_retry` on
        each retry."""
        ...

    def flush(self) -> None:
        """Answer what is queued (local batching); endpoints answer on submit and do nothing here."""
        ...

    def slots(self, specs: Sequence[Any]) -> int:
        """How many requests for these specs the backend answers at once."""
        ...

    def choice_logprobs(
        self, spec: Any, chats: Sequence[list[dict[str, str]]], choices: Sequence[str]
    ) -> list[dict[str, float] | None]:
        """For each chat, the log-prob of each of `choices` (short texts, such as a judge's letters) as the whole
        answer, where the backend can tell it; None where the model gave no log-probs at all; `{THINKS_FIRST: 0.0}`
        where the model thinks before it answers."""
        ...
