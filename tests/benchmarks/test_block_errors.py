"""block_errors: each block's local and accumulated error against float64 recomputations."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from adaround_lightning.benchmarks.block_errors import block_errors, fitted_blocks


def _network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5)),
    ).eval()


def _perturbed(network: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    perturbed = copy.deepcopy(network)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return perturbed


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().sum() / b.double().square().sum())


def test_errors_equal_float64_recomputations() -> None:
    fp = _network()
    q = _perturbed(fp, 1)
    images = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    errors, divergence = block_errors(fp, q, ["0", "1", "2"], images, chunk=4)

    fp64, q64, x = fp.double(), q.double(), images.double()
    inputs = [x, fp64[0](x), fp64[1](fp64[0](x))]
    q_outputs = [q64[0](x), q64[1](q64[0](x)), q64(x)]
    for k, error in enumerate(errors):
        target = fp64[k](inputs[k])
        assert abs(error.local - _relative(q64[k](inputs[k]), target)) < 1e-6 * error.local
        assert abs(error.accumulated - _relative(q_outputs[k], target)) < 1e-6 * error.accumulated
    # The first block gets the same input in both networks: local = accumulated.
    assert abs(errors[0].local - errors[0].accumulated) < 1e-9
    expected = F.kl_div(
        F.log_softmax(q64(x), 1), F.log_softmax(fp64(x), 1), log_target=True, reduction="batchmean"
    )
    assert abs(divergence - float(expected)) < 1e-4 * float(expected)  # float32 KL


def test_a_network_against_itself_has_no_error() -> None:
    fp = _network()
    errors, divergence = block_errors(
        fp, copy.deepcopy(fp), ["0", "1", "2"], torch.randn(6, 3, 8, 8)
    )
    assert divergence == 0.0
    assert all(e.local == 0.0 and e.accumulated == 0.0 for e in errors)


def test_an_in_place_activation_after_a_block_does_not_change_its_error() -> None:
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1)).eval()
    q = _perturbed(fp, 3)
    images = torch.randn(6, 3, 6, 6)
    errors, _ = block_errors(fp, q, ["0", "2"], images)
    # Block "0" sees the images in both networks: its local and accumulated errors are one.
    expected = _relative(q[0].double()(images.double()), fp[0].double()(images.double()))
    assert abs(errors[0].local - expected) < 1e-6 * expected
    assert abs(errors[0].accumulated - expected) < 1e-6 * expected


def test_fitted_blocks_keep_network_order_once_each() -> None:
    layers = [
        SimpleNamespace(name="stem", block=None),
        SimpleNamespace(name="b.0", block="b"),
        SimpleNamespace(name="b.1", block="b"),
        SimpleNamespace(name="fc", block=None),
    ]
    assert fitted_blocks(layers) == ["stem", "b", "fc"]
