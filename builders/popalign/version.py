"""The installed package's version, from its metadata (pyproject.toml is the one place it is written)."""

from importlib import metadata

__version__ = metadata.version("popalign")


def installed_version(name: str) -> str | None:
    """A distribution's version, or None where it is not installed (transformers, on a core install)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
