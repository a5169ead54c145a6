"""Shared fixtures: a tiny config-built causal LM saved with the SmolLM2 tokenizer, and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from popalign.local_backend import embedded_model_path

POPALIGN = Path(sys.executable).with_name("popalign")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer Llama built from a config (random weights) with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = embedded_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_roles(tiny_model_dir: Path) -> list[str]:
    """`--model` flags giving every role the tiny model, the contrast roles a 2- or 3-layer copy of it."""
    roles = {"default": "", "large": "", "small": ":layers=2", "first": "", "second": ":layers=3"}
    return [flag for role, option in roles.items() for flag in ("--model", f"{role}={tiny_model_dir}{option}")]


def _run_popalign(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [str(POPALIGN), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )


@pytest.fixture
def popalign() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the installed `popalign` console script as a user would: `popalign("build", "--limit", 2)`."""
    return _run_popalign
