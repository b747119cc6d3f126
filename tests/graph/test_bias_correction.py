"""Empirical bias correction: float64 means, optimality, the corrected network of the walk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, EngineConfig, QuantConfig, adaround
from adaround_lightning.graph.bias_correction import channel_dim, mean_output_error, shift_bias
from adaround_lightning.graph.capture import capture_output
from adaround_lightning.torch_frontend.torch_result import AdaroundResult

CPU = {"accelerator": "cpu", "devices": 1}


@pytest.mark.parametrize(("shape", "dim"), [((6, 5, 4, 3), 1), ((6, 7, 5), -1), ((9, 4), -1)])
def test_mean_error_matches_a_float64_reference(shape: tuple[int, ...], dim: int) -> None:
    generator = torch.Generator().manual_seed(len(shape))
    fp, q = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    channels = shape[dim]
    reference = torch.stack(
        [(fp.double().select(dim, c) - q.double().select(dim, c)).mean() for c in range(channels)]
    )
    assert torch.allclose(mean_output_error(fp, q, dim), reference, atol=1e-12)


def test_the_shift_minimises_the_output_error_and_centres_it() -> None:
    generator = torch.Generator().manual_seed(3)
    layer = nn.Conv2d(3, 4, 3)
    x = torch.randn(16, 3, 6, 6, generator=generator)
    with torch.no_grad():
        fp_out = layer(x) + torch.randn(4, generator=generator)[None, :, None, None]
        q_out = layer(x)
        delta = mean_output_error(fp_out, q_out, channel_dim(layer))
        assert shift_bias(layer, delta)
        corrected = layer(x)
    residual = (fp_out - corrected).double()
    assert residual.mean((0, 2, 3)).abs().max() < 1e-5
    mse = residual.pow(2).mean()
    for _ in range(5):  # any other constant shift does worse
        other = torch.randn(4, generator=generator, dtype=torch.float64) * 0.05
        assert (residual - other[None, :, None, None]).pow(2).mean() > mse


def test_a_layer_without_bias_is_left_alone() -> None:
    layer = nn.Linear(3, 2, bias=False)
    before = layer.weight.detach().clone()
    assert not shift_bias(layer, torch.ones(2, dtype=torch.float64))
    assert layer.bias is None and torch.equal(layer.weight, before)
    with pytest.raises(ValueError, match="shape"):
        shift_bias(nn.Linear(3, 2), torch.ones(3))


def _mean_errors(result: AdaroundResult, images: torch.Tensor) -> dict[str, float]:
    """Largest per-channel |mean(float - quantized)| of each biased layer, whole networks."""
    errors = {}
    for report in result.layers:
        q_layer = result.model.get_submodule(report.name)
        if q_layer.bias is None:
            continue
        fp_out = capture_output(
            result.float_model, result.float_model.get_submodule(report.name), images
        )
        q_out = capture_output(result.model, q_layer, images)
        scale = fp_out.double().std()
        errors[report.name] = float(
            mean_output_error(fp_out, q_out, channel_dim(q_layer)).abs().max() / scale
        )
    return errors


@pytest.mark.parametrize("granularity", ["layer", "block"])
def test_walk_leaves_every_layer_unbiased_and_resume_restores_it(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path, granularity: str
) -> None:
    quant = QuantConfig(weight_bits=2, scale_method="maxabs")
    config = AdaroundConfig(
        iters=40,
        batch_size=16,
        seed=0,
        granularity=granularity,
        bias_correction=False,
    )
    # The mean is accumulated over uneven chunks (24, 24, 16).
    engine = EngineConfig(forward_batch_size=24)
    plain = adaround(tiny_cnn, images, quant, config, CPU, engine=engine)
    corrected_config = AdaroundConfig(**{**config.__dict__, "bias_correction": True})
    corrected = adaround(
        tiny_cnn, images, quant, corrected_config, CPU, checkpoint=tmp_path, engine=engine
    )
    before, after = _mean_errors(plain, images), _mean_errors(corrected, images)
    assert after and after.keys() == before.keys()
    # Later corrections do not move earlier layers' inputs: every layer ends centred.
    assert max(after.values()) < 1e-4
    assert max(before.values()) > 100 * max(after.values())
    # The integer weights are still exactly on the grid; only biases moved.
    for name, quantizer in corrected.quantizers.items():
        layer = corrected.model.get_submodule(name)
        assert torch.equal(
            layer.weight.detach(), quantizer.integer_weight().float() * quantizer.scale
        )
    # Every layer is in the checkpoint: the second run restores them all, biases included.
    resumed = adaround(tiny_cnn, images, quant, corrected_config, CPU, checkpoint=tmp_path)
    for name, value in corrected.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
