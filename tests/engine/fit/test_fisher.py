"""``adaround.fisher``: BRECQ's Fisher-weighted block reconstruction, against float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.cache.activation_cache import CalibrationCache, RandomBatches
from adaround_lightning.engine.cache.storage import CacheAllocator, CacheDevice, CacheDtype
from adaround_lightning.engine.fit.fisher import (
    FisherSums,
    FisherWeights,
    block_output_sensitivity,
    float_log_probabilities,
)
from adaround_lightning.quant.loss import AdaptiveRoundingLoss

CPU = {"accelerator": "cpu"}


def _mlp(generator: torch.Generator) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3))
    for parameter in net.parameters():
        parameter.data = torch.randn(parameter.shape, generator=generator)
    return net.eval()


def test_sensitivity_is_the_squared_kl_gradient_at_the_block_output_in_float64() -> None:
    generator = torch.Generator().manual_seed(11)
    q_net, fp_net = _mlp(generator), _mlp(generator)
    x = torch.randn(12, 5, generator=generator)
    sums = FisherSums()
    log_p = float_log_probabilities(fp_net, x, chunk=5)
    # Two chunks: a row's value must not depend on the chunk it is computed in.
    g2 = torch.cat(
        [
            block_output_sensitivity(q_net, q_net[0], x, log_p, 0, 7, sums),
            block_output_sensitivity(q_net, q_net[0], x, log_p, 7, 12, sums),
        ]
    )
    # Independent float64 graph: z = W1 x + b1, scores = W2 relu(z) + b2,
    # KL(p_fp || p_q) summed over the rows, differentiated with respect to z.
    w1, b1, w2, b2 = (p.detach().double() for p in q_net.parameters())
    f1, fb1, f2, fb2 = (p.detach().double() for p in fp_net.parameters())
    p_fp = torch.softmax(torch.relu(x.double() @ f1.T + fb1) @ f2.T + fb2, dim=1)
    z = (x.double() @ w1.T + b1).requires_grad_(True)
    log_q = torch.log_softmax(torch.relu(z) @ w2.T + b2, dim=1)
    (p_fp * (p_fp.log() - log_q)).sum().backward()
    torch.testing.assert_close(g2.double(), z.grad.pow(2), rtol=1e-4, atol=1e-10)
    assert sums.count == g2.numel()
    assert sums.mean() == pytest.approx(float(z.grad.pow(2).mean()), rel=1e-4)


@pytest.mark.parametrize("damping", [0.0, 0.5, 1.0, 1e6])
def test_weights_average_one_and_follow_the_damped_formula(damping: float) -> None:
    generator = torch.Generator().manual_seed(int(damping) % 97)
    g2 = torch.rand(9, 4, 3, generator=generator).pow(3)
    m = float(g2.double().mean())
    weights = FisherWeights(g2, m, damping)[torch.arange(9)].double()
    expected = (g2.double() + damping * m) / ((1 + damping) * m)
    torch.testing.assert_close(weights, expected)
    assert float(weights.mean()) == pytest.approx(1.0, rel=1e-6)
    if damping == 0.0:
        torch.testing.assert_close(weights, g2.double() / m)


def test_weighted_reconstruction_is_the_weighted_sum_over_channels_in_float64() -> None:
    generator = torch.Generator().manual_seed(3)
    out, target = torch.randn(2, 6, 4, 5, 5, generator=generator).unbind(0)
    weights = torch.rand(6, 4, 5, 5, generator=generator)
    loss = AdaptiveRoundingLoss(max_iter=10)
    value = loss.reconstruction_loss(out, target, 1, weights)
    expected = (weights.double() * (out.double() - target.double()) ** 2).sum(1).mean()
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    unweighted = loss.reconstruction_loss(out, target, 1, torch.ones_like(weights))
    assert float(unweighted) == pytest.approx(float(loss.reconstruction_loss(out, target, 1)))


def test_batches_carry_the_weights_of_the_same_rows() -> None:
    rows = torch.arange(10.0).unsqueeze(1)
    weights = FisherWeights(rows * 2.0 + 1.0, mean=10.0, damping=0.0)
    for stacked in (1, 3):
        batches = RandomBatches(rows, rows, 4, 5, 0, stacked, weights=weights)
        for x, y, w in batches:
            torch.testing.assert_close(w, (2.0 * y + 1.0) / 10.0)
            torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="shape"):
        RandomBatches(rows, rows, 4, 2, 0, weights=FisherWeights(torch.ones(10, 2), 1.0, 1.0))


def test_squared_gradients_stay_float32_in_a_float16_cache() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    allocator = CacheAllocator(torch.device("cpu"), CacheDevice.CPU, dtype=CacheDtype.FLOAT16)
    cache = CalibrationCache(torch.randn(8, 3), 4, 2, 0, allocator=allocator)
    cache.cache_block(net, net, net[0], net[0])
    cache.cache_block_output(net[0], 0)
    tiny = torch.full((8, 4), 1e-12)  # below float16's smallest subnormal (6e-8)
    assert cache.cache_fisher_weights(lambda s, e: tiny[s:e], lambda: 1e-12, 0.0)
    assert cache.weights is not None
    assert torch.equal(cache.weights[torch.arange(8)], torch.ones(8, 4))
    assert not cache.cache_fisher_weights(lambda s, e: torch.zeros(e - s, 4), lambda: 0.0, 1.0)
    cache.release_layer()
    assert cache.weights is None


def _residual_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        BasicBlock(8, 8),
        BasicBlock(8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def test_fisher_block_fits_run_on_the_grid_and_count_their_passes() -> None:
    net = _residual_net()
    images = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    runs = {}
    for fisher in (False, True):
        config = AdaroundConfig(iters=40, batch_size=16, fisher=fisher, fisher_damping=0.5)
        runs[fisher] = adaround(net, images, QuantConfig(weight_bits=2), config, CPU)
    plain, weighted = runs[False], runs[True]
    # One pass of the float network for its output, then one per block fit (two BasicBlocks).
    assert weighted.cache.full_network_passes == plain.cache.full_network_passes + 3
    for name, fq in weighted.quantizers.items():
        q = fq.integer_weight()
        assert int(q.min()) >= -2 and int(q.max()) <= 1
        weight = weighted.model.get_submodule(name).weight
        assert torch.equal(weight, q.float() * fq.scale)
    # The float weights of the blocks came back after each round-to-nearest pass: the
    # float model is the input, and the untouched layers equal it.
    for name, module in weighted.float_model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            assert torch.equal(module.weight, plain.float_model.get_submodule(name).weight)


def test_fisher_needs_block_fits_and_class_scores() -> None:
    with pytest.raises(ValueError, match="granularity=block"):
        AdaroundConfig(fisher=True, granularity="layer")
    with pytest.raises(ValueError, match="fisher_damping"):
        AdaroundConfig(fisher=True, fisher_damping=-1.0)

    class TupleOutput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _residual_net()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.body(x), x

    images = torch.randn(16, 3, 8, 8)
    config = AdaroundConfig(iters=4, batch_size=8, fisher=True)
    with pytest.raises(UserError, match="fisher=false"):
        adaround(TupleOutput().eval(), images, QuantConfig(weight_bits=4), config, CPU)


def test_kl_gradient_direction_lowers_the_network_loss() -> None:
    # A first-order check of the sign: stepping the block output against g lowers the KL.
    generator = torch.Generator().manual_seed(4)
    q_net, fp_net = _mlp(generator), _mlp(generator)
    x = torch.randn(6, 5, generator=generator)
    log_p = float_log_probabilities(fp_net, x, chunk=6)
    z = q_net[0](x).detach().requires_grad_(True)
    kl = F.kl_div(
        F.log_softmax(q_net[2](torch.relu(z)), 1), log_p, log_target=True, reduction="sum"
    )
    (grad,) = torch.autograd.grad(kl, z)
    g2 = block_output_sensitivity(q_net, q_net[0], x, log_p, 0, 6, FisherSums())
    torch.testing.assert_close(g2, grad.pow(2))
    with torch.no_grad():
        stepped = q_net[2](torch.relu(z - 1e-3 * grad))
        after = F.kl_div(F.log_softmax(stepped, 1), log_p, log_target=True, reduction="sum")
    assert float(after) < float(kl.detach())
