"""Perplexity against a float64 recomputation from log-probabilities."""

from __future__ import annotations

import math

import torch
from torch import nn

from adaround_lightning.app.perplexity import perplexity, token_kl


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


def test_token_kl_is_the_mean_kl_of_the_next_token_distributions() -> None:
    torch.manual_seed(1)
    reference, model, ids = _Bigram(11), _Bigram(11), torch.randint(0, 11, (5, 6))
    p = torch.softmax(reference.table.weight.double(), -1)[ids]  # (B, L, V)
    q = torch.softmax(model.table.weight.double(), -1)[ids]
    expected = float((p * (p.log() - q.log())).sum(-1).mean())
    assert math.isclose(token_kl(reference, model, ids, batch=2), expected, rel_tol=1e-9)
    assert token_kl(reference, reference, ids) == 0.0 < expected
