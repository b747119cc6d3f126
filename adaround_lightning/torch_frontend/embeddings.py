"""A language model's input embedding, rounded to nearest on the layers' grid when opted in.

``quant.quantize_embeddings``: the input embedding (``get_input_embeddings()``, an
``nn.Embedding`` of shape ``(vocab, d)``) gets the grid the Linear layers get, one scale per row
or per group of ``group_size`` of its ``d`` elements, and the integers are rounded to nearest.
AdaRound has nothing to learn there: a lookup table's output for a token is its own row, so the
rounding that minimises that output's error, row by row, is the nearest one. It is rounded
before the walk, so every block is fitted on the inputs the quantized embedding gives it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from adaround_lightning.quant.factory import layer_quantizer
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = ["EMBEDDING_TIED", "round_input_embedding"]

log = logging.getLogger(__name__)

#: Why an input embedding that shares its weight with ``lm_head`` stays in float.
EMBEDDING_TIED = (
    "input embedding tied to the output projection, left in float (it would quantize lm_head too)"
)


def _input_embedding(model: nn.Module) -> tuple[str, nn.Embedding] | None:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if not isinstance(embedding, nn.Embedding):
        return None
    name = next(n for n, m in model.named_modules() if m is embedding)
    return name, embedding


def round_input_embedding(model: nn.Module, quant: QuantConfig) -> dict[str, AdaroundFakeQuantizer]:
    """Round ``model``'s input embedding to nearest in place, with ``quant.quantize_embeddings``.

    Returns:
        ``{name: quantizer}`` of the rounded embedding (its integers are the nearest ones), or
        ``{}``: not opted in, no ``nn.Embedding`` input, or one tied to ``lm_head`` (logged).

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
        >>> round_input_embedding(gpt2, QuantConfig(quantize_embeddings=True))  # tied: float
        {}
    """
    if not quant.quantize_embeddings:
        return {}
    found = _input_embedding(model)
    if found is None:
        log.warning("quant.quantize_embeddings: the model has no nn.Embedding input embedding")
        return {}
    name, embedding = found
    head_getter = getattr(model, "get_output_embeddings", None)
    head = head_getter() if callable(head_getter) else None
    if head is not None and getattr(head, "weight", None) is embedding.weight:
        log.warning("%s: %s", name, EMBEDDING_TIED)
        return {}
    quantizer = layer_quantizer(name, embedding.weight.detach(), quant.weight_bits, quant)
    quantizer.use_soft_rounding = False
    quantizer.V.requires_grad_(False)
    with torch.no_grad():  # V >= 0 exactly where frac(W/s) >= 1/2: the nearest integers
        embedding.weight.copy_(quantizer.hard_weight().to(embedding.weight.dtype))
    log.info(
        "%s: input embedding %s rounded to nearest on its W%d grid (quant.quantize_embeddings)",
        name,
        tuple(embedding.weight.shape),
        quant.weight_bits,
    )
    return {name: quantizer}
