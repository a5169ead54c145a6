"""Locate the data folders shipped with the package (`templates/`, `dataset_cards/`)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


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
