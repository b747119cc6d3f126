"""Perplexity against a float64 recomputation from log-probabilities."""

from __future__ import annotations

import math

import torch
from torch import nn

from adaround_lightning.app.perplexity import perplexity


class _Bigram(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)  # (B, L, V) logits


def test_perplexity_is_exp_mean_negative_log_likelihood() -> None:
    torch.manual_seed(0)
    model, ids = _Bigram(13), torch.randint(0, 13, (7, 9))
    logp = torch.log_softmax(model.table.weight.double(), -1)  # (V, V)
    nll = -torch.stack([logp[ids[:, t], ids[:, t + 1]] for t in range(8)]).mean()
    assert math.isclose(perplexity(model, ids, batch=3), math.exp(float(nll)), rel_tol=1e-6)
