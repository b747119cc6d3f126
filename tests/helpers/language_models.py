"""Tiny random causal language models built from configs (no downloads), and a model folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def tiny_llama(seed: int = 0, vocab: int = 256, hidden: int = 64) -> nn.Module:
    """A 2-layer Llama (grouped-query attention, rotary embeddings), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0, vocab: int = 256) -> nn.Module:
    """A 2-layer GPT-2 (Conv1D projections, lm_head tied to the embedding), random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def llama_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny Llama and a byte-level BPE tokenizer trained on synthetic code, saved in ``folder``.

    Also writes ``text.txt`` (the tokenizer's training text), for ``data.text``.
    """
    from adaround_lightning.benchmarks.train_causal_lm import build_model, train_tokenizer

    lines = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]
    text = "".join(lines)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.txt").write_text(text)
    tokenizer = train_tokenizer(text, 300, folder)
    torch.manual_seed(seed)
    settings = {"hidden": 64, "intermediate": 128, "layers": 2, "heads": 4, "kv_heads": 2}
    build_model(len(tokenizer), {**settings, "seq_len": 32}).save_pretrained(folder)
    return folder
