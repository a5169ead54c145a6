"""Shared fixtures: tiny config-built models (a causal LM, a reward model, a pairwise ranker) saved with the SmolLM2
tokenizer, and the CLI runner."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import POPALIGN, run_offline, save_tiny_model, save_tiny_pair_ranker, serve_scripted


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer Llama built from a config (random weights) with SmolLM2's tokenizer and chat template."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same Llama as a one-label sequence classifier: a reward model with random weights."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-reward"), reward=True)


@pytest.fixture(scope="session")
def tiny_pair_ranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PairRM-architecture pairwise ranker built from a config (random weights)."""
    return save_tiny_pair_ranker(tmp_path_factory.mktemp("tiny-pairrm"))


@pytest.fixture
def tiny_roles(tiny_model_dir: Path) -> list[str]:
    """`--model` flags giving every role the tiny model, the contrast roles a 2- or 3-layer copy of it."""
    roles = {"default": "", "large": "", "small": ":layers=2", "first": "", "second": ":layers=3"}
    return [flag for role, option in roles.items() for flag in ("--model", f"{role}={tiny_model_dir}{option}")]


def _run_popalign(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_offline(POPALIGN, *args, cwd=cwd)


@pytest.fixture
def popalign() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed `popalign` console script as a user would: `popalign("build", "--limit", 2)`."""
    return _run_popalign


@pytest.fixture(scope="session")
def embedded_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The README's first command, `popalign build --limit 4`, on the embedded SmolLM2 with its default settings
    (all six strategies), once per session: its folder and the finished command."""
    folder = tmp_path_factory.mktemp("embedded-build")
    result = _run_popalign(
        "build", "--limit", 4, "--out", folder / "d", "--cache-dir", folder / "cache", "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    return folder / "d", result


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The scripted server as model `scripted-default`: its URL and its request log."""
    yield from serve_scripted(tmp_path, "scripted-default")


@pytest.fixture
def planner(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A second scripted server, as model `scripted-planner`."""
    yield from serve_scripted(tmp_path, "scripted-planner")
