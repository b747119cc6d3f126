"""``adaround.learn_scale``: the scale learned with ``V`` (issue #23), on a symmetric grid."""

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
