"""Tiny models built from a config (random weights) and saved with SmolLM2's tokenizer and chat template: a causal
LM, and a sequence-classification reward model."""

from __future__ import annotations

from pathlib import Path


def save_tiny_model(folder: Path, *, reward: bool = False) -> Path:
    """Save a 4-layer, 32-wide Llama into `folder`, seeded, loadable offline by path; with `reward`, a
    one-label sequence classifier (a reward model) instead of a causal LM."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from popalign.backends.local import embedded_model_path

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
        num_labels=1,
    )
    (LlamaForSequenceClassification if reward else LlamaForCausalLM)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
