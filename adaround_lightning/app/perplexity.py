"""Perplexity of a causal language model on token windows: the LM runs' evaluation."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["perplexity", "token_kl"]


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


@torch.no_grad()
def token_kl(
    reference: nn.Module,
    model: nn.Module,
    windows: torch.Tensor,
    device: torch.device | str = "cpu",
    batch: int = 8,
) -> float:
    """Mean over every position of ``windows`` of ``KL(reference || model)``, in nats.

    How far a quantized model's next-token distributions are from the float model's: a finer
    measure of fidelity than perplexity, which quantization noise can move either way.

    Example:
        >>> class Uniform(nn.Module):
        ...     def forward(self, ids):
        ...         return torch.zeros(*ids.shape, 50)
        >>> token_kl(Uniform(), Uniform(), torch.randint(0, 50, (4, 9)))
        0.0
    """
    reference.eval()
    model.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch):
        ids = chunk.to(device)
        log_p = F.log_softmax(_logits(reference(ids)).double(), dim=-1)  # (B, L, V)
        log_q = F.log_softmax(_logits(model(ids)).double(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
        count += ids.numel()
    return total / count
