"""``adaround.learn_scale``: the scale learned with ``V`` (issue #23), per channel or per group."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.engine.fit.reconstruction import LayerReconstruction
from adaround_lightning.engine.records.checkpoint import load_progress
from adaround_lightning.export import ExportConfig, export_run, verify_grid
from adaround_lightning.quant.factory import quantizer_for_weight
from adaround_lightning.quant.loss import AdaptiveRoundingLoss
from adaround_lightning.quant.quantizer import GAMMA, ZETA

CPU = {"accelerator": "cpu"}


def _calibrate(model, images, checkpoint=None, **config):
    return adaround(
        model,
        images,
        QuantConfig(weight_bits=3, per_channel=True),
        AdaroundConfig(iters=24, batch_size=16, seed=1, learn_scale=True, scale_lr=0.05, **config),
        CPU,
        checkpoint=checkpoint,
    )


def test_the_gradient_of_the_log_ratio_matches_float64(tiny_cnn: nn.Module) -> None:
    # d/d rho of ||exp(rho) s0 clip(floor(W/s0) + h(V)) x - y||^2, recomputed in float64
    # from the paper's formulas (eqs. 22-23) with autograd on an independent graph.
    generator = torch.Generator().manual_seed(5)
    layer = nn.Linear(6, 4)
    x, y = torch.randn(16, 6, generator=generator), torch.randn(16, 4, generator=generator)
    quantizer = quantizer_for_weight(layer.weight.detach(), 3, True, "minmax")
    loss = AdaptiveRoundingLoss(max_iter=10, reconstruction="mean", reg_param=0.0)
    module = LayerReconstruction(layer, quantizer, loss, None, 1e-3, scale_lr=0.01)
    with torch.no_grad():
        module.log_scale_ratios[0].copy_(0.3 * torch.randn(4, 1, generator=generator))
    module._loss(x, y, 5).backward()
    rho = module.log_scale_ratios[0].detach().double().requires_grad_(True)
    h = (torch.sigmoid(quantizer.V.detach().double()) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    grid = (quantizer.weight_floor.double() + h).clamp(quantizer.quant_min, quantizer.quant_max)
    weight = rho.exp() * quantizer.scale.double() * grid
    out = x.double() @ weight.T + layer.bias.detach().double()
    ((out - y.double()) ** 2).mean().backward()
    torch.testing.assert_close(module.log_scale_ratios[0].grad.double(), rho.grad)


def test_learned_scales_keep_the_grid_and_pass_the_grid_check(tiny_cnn, images, tmp_path):
    result = _calibrate(tiny_cnn, images)
    moved = 0
    for name, quantizer in result.quantizers.items():
        assert quantizer.floor_scale is not None
        moved += int(not torch.equal(quantizer.scale, quantizer.floor_scale))
        q = quantizer.integer_weight()
        assert int(q.min()) >= -4 and int(q.max()) <= 3
        weight = result.model.get_submodule(name).weight
        torch.testing.assert_close(weight, q.float() * quantizer.scale, rtol=0, atol=0)
    assert moved == len(result.quantizers)  # every scale learned something
    export_run(result, tmp_path, images[:2], ExportConfig(onnx=True))
    report = verify_grid(tmp_path)
    assert report["passed"] and report["layers"] == len(result.quantizers)


def test_resume_restores_the_learned_scale(tiny_cnn, images, tmp_path: Path) -> None:
    first = _calibrate(tiny_cnn, images, checkpoint=tmp_path, granularity="layer")
    finished = load_progress(tmp_path, "")
    assert all(entry.floor_scale is not None for entry in finished.values())
    again = _calibrate(tiny_cnn, images, checkpoint=tmp_path, granularity="layer")
    for name, quantizer in first.quantizers.items():
        restored = again.quantizers[name]
        assert torch.equal(restored.scale, quantizer.scale)
        assert torch.equal(restored.floor_scale, quantizer.floor_scale)
        assert torch.equal(restored.integer_weight(), quantizer.integer_weight())


def test_group_ratios_give_the_float64_gradient_on_an_asymmetric_grid() -> None:
    # One log-ratio per group of G weights, zero points fixed: W~ = exp(rho_g) s0 (clip(floor(W/s0)
    # + z + h(V)) - z), recomputed in float64 from the paper's formulas with autograd.
    generator = torch.Generator().manual_seed(11)
    layer = nn.Linear(8, 3)
    x, y = torch.randn(16, 8, generator=generator), torch.randn(16, 3, generator=generator)
    quantizer = quantizer_for_weight(layer.weight.detach(), 3, True, "minmax", 4, False)
    assert not quantizer.is_symmetric and quantizer.scale_count_shape == (3, 2)
    loss = AdaptiveRoundingLoss(max_iter=10, reconstruction="mean", reg_param=0.0)
    module = LayerReconstruction(layer, quantizer, loss, None, 1e-3, scale_lr=0.01)
    assert module.log_scale_ratios[0].shape == (3, 2)
    with torch.no_grad():
        module.log_scale_ratios[0].copy_(0.3 * torch.randn(3, 2, generator=generator))
    module._loss(x, y, 5).backward()
    rho = module.log_scale_ratios[0].detach().double().requires_grad_(True)
    h = (torch.sigmoid(quantizer.V.detach().double()) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    zero = quantizer.zero_points.double().repeat_interleave(4, dim=1)
    scale = quantizer.scale.double()[:, ::4].repeat_interleave(4, dim=1)
    integers = torch.floor(layer.weight.detach().double() / scale) + zero + h
    grid = integers.clamp(quantizer.quant_min, quantizer.quant_max) - zero
    weight = rho.exp().repeat_interleave(4, dim=1) * scale * grid
    out = x.double() @ weight.T + layer.bias.detach().double()
    ((out - y.double()) ** 2).mean().backward()
    torch.testing.assert_close(module.log_scale_ratios[0].grad.double(), rho.grad)


def test_group_scales_learned_on_asymmetric_grids_keep_integers_and_zero_points(
    tiny_cnn, images
) -> None:
    quant = QuantConfig(weight_bits=3, per_channel=True, group_size=4, weight_symmetric=False)
    config = AdaroundConfig(iters=24, batch_size=16, seed=1, learn_scale=True, scale_lr=0.05)
    result = adaround(tiny_cnn, images, quant, config, CPU)
    moved = grouped = 0
    for name, quantizer in result.quantizers.items():
        if quantizer.group_size is not None:  # the layers 4 divides; the others per channel
            grouped += 1
            groups = quantizer.scale.reshape(quantizer.scale.shape[0], -1, 4)
            # one scale per group of 4 (the ratio is learned per group, not per element)
            assert torch.equal(groups, groups[..., :1].expand_as(groups))
        moved += int(not torch.equal(quantizer.scale, quantizer.floor_scale))
        q = quantizer.integer_weight().float()
        assert int(q.min()) >= quantizer.quant_min and int(q.max()) <= quantizer.quant_max
        weight = result.model.get_submodule(name).weight
        expected = (q - quantizer.zero_point) * quantizer.scale
        torch.testing.assert_close(weight, expected, rtol=0, atol=0)
    assert moved == len(result.quantizers) and grouped >= 1
