"""The comparison of AIMET's integers with ours, against a float64 recomputation."""

from __future__ import annotations

import torch

from adaround_lightning.benchmarks.aimet_reads import Agreement, agreement, integers_of


def _grid(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(6, generator=g) * 0.1 + 0.01
    q = torch.randint(-4, 4, (6, 3, 3, 3), generator=g, dtype=torch.int8)
    fake = (q.double() * scale.double()[:, None, None, None]).float()  # Q(W) = s q, float32
    return fake, scale, q


def test_integers_of_a_fake_quantized_weight_are_its_grid_points() -> None:
    fake, scale, q = _grid(0)
    assert torch.equal(integers_of(fake, scale), q.long())
    per_tensor = integers_of(fake[:1], scale[:1])
    assert torch.equal(per_tensor, q[:1].long())


def test_agreement_counts_every_differing_integer_and_the_gap_in_steps() -> None:
    fake, scale, q = _grid(1)
    same = agreement(fake, scale, q, scale)
    assert (same.layers, same.integers, same.identical) == (1, q.numel(), q.numel())
    assert same.worst_steps < 1e-5
    # Two of ours moved by one step: both counted, and the gap is one step.
    moved = q.clone()
    moved.view(-1)[[3, 40]] += 1
    differ = agreement(fake, scale, moved, scale)
    assert differ.identical == q.numel() - 2
    assert abs(differ.worst_steps - 1.0) < 1e-5
    total = Agreement()
    total.add(same)
    total.add(differ)
    assert (total.layers, total.integers, total.identical) == (2, 2 * q.numel(), 2 * q.numel() - 2)
