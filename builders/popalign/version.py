"""The installed package's version, from its metadata (pyproject.toml is the one place it is written)."""

from importlib import metadata

__version__ = metadata.version("popalign")
