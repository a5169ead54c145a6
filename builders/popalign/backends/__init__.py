"""The backends that answer a role's requests, behind one contract (`base.Backend`), and the one registry from
a role spec's kind (`spec.kind`: `local` for transformers, `llama.cpp` for GGUF files, or `endpoint`) to the
backend that answers it.

`open_backends` makes one backend of each kind a build needs; the heavy libraries (torch and transformers for
local models) load here, when a backend of that kind is first made, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from popalign.backends.base import Backend
from popalign.config import Endpoints
from popalign.extras import require
from popalign.roles import ModelSpec, Spec

if TYPE_CHECKING:
    from popalign.backends.local import LocalBackend
    from popalign.backends.pair_ranker import PairRanker
    from popalign.backends.reward_model import RewardModel


def check_installed(specs: Iterable[Spec]) -> None:
    """Refuse, before any work, a spec whose backend needs an extra that is not installed (`popalign.extras`):
    local models need `popalign[local]`, the embedded demo model `popalign[demo]`; endpoints need nothing more.

    Raises:
        MissingExtraError: naming the extra to install.
    """
    for spec in specs:
        if spec.embedded:
            require("demo", "the embedded demo model (what runs when no --model is given)")
        elif spec.kind == "llama.cpp":
            require("llama", f"the GGUF model {spec} on llama.cpp (or give it :engine=transformers)")
        elif spec.kind == "local":
            require("local", f"the local model {spec}")


def local_backend(batch_size: int) -> LocalBackend:
    """The in-process transformers backend (loads torch and transformers)."""
    require("local", "a local model")
    from popalign.backends.local import LocalBackend

    return LocalBackend(batch_size=batch_size)


def reward_model(spec: ModelSpec, batch_size: int) -> RewardModel | PairRanker:
    """A model judge (loads torch and transformers): a pairwise ranker where the model's config names PairRM's
    architecture, else a sequence-classification reward model."""
    require("local", "a reward-model judge")
    from popalign.backends.pair_ranker import PairRanker, is_pair_ranker
    from popalign.backends.reward_model import RewardModel

    if is_pair_ranker(spec):
        return PairRanker(spec, batch_size=batch_size)
    return RewardModel(spec, batch_size=batch_size)


def _llama_backend(batch_size: int, endpoints: Endpoints) -> Backend:
    require("llama", "a GGUF model on llama.cpp")
    from popalign.backends.llama_cpp import LlamaCppBackend

    return LlamaCppBackend()


def _endpoint_backend(batch_size: int, endpoints: Endpoints) -> Backend:
    from popalign.backends.endpoint import EndpointBackend

    return EndpointBackend(endpoints)


#: Each kind of role spec and how to make the backend that answers it.
REGISTRY: dict[str, Callable[[int, Endpoints], Backend]] = {
    "local": lambda batch_size, endpoints: local_backend(batch_size),
    "llama.cpp": _llama_backend,
    "endpoint": _endpoint_backend,
}


def open_backends(
    specs: Iterable[Spec], *, batch_size: int, endpoints: Endpoints, kinds: Iterable[str] = ()
) -> dict[str, Backend]:
    """One backend of each kind that `specs` (and `kinds`, wanted besides) need, by kind.

    >>> from popalign.roles import parse_spec
    >>> sorted(open_backends([parse_spec("http://localhost:8080")], batch_size=16, endpoints=Endpoints()))
    ['endpoint']
    """
    needed = {spec.kind for spec in specs} | set(kinds)
    return {kind: REGISTRY[kind](batch_size, endpoints) for kind in sorted(needed)}
