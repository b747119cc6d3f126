"""Perplexity of a causal language model on token windows: the LM runs' evaluation."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["perplexity"]


def _logits(output: object) -> torch.Tensor:
    """A model's next-token logits ``(B, L, V)``: a tensor, or a ``transformers`` output."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(output).__name__}, not logits")
    return logits


@torch.no_grad()
def perplexity(
    model: nn.Module, windows: torch.Tensor, device: torch.device | str = "cpu", batch: int = 8
) -> float:
    """``exp`` of the mean next-token cross-entropy over every position of ``windows``.

    Each window ``(L,)`` scores its ``L - 1`` next tokens, summed in float64 over all windows.

    Args:
        model: A causal LM called as ``model(ids)`` (a ``transformers`` model or one that
            returns logits ``(B, L, V)``).
        windows: Token ids ``(M, L)``.
        device: Where the forward passes run.
        batch: Windows per forward pass.

    Example:
        >>> class Uniform(nn.Module):
        ...     def forward(self, ids):
        ...         return torch.zeros(*ids.shape, 50)
        >>> round(perplexity(Uniform(), torch.randint(0, 50, (4, 9))), 3)  # uniform over 50
        50.0
    """
    model.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch):
        ids = chunk.to(device)
        logits = _logits(model(ids)).float()  # (B, L, V)
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss.double())
        count += ids[:, 1:].numel()
    return math.exp(total / count)
