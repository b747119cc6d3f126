"""Empirical bias correction: float64 means, optimality, the corrected network of the driver."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.bias_correction import channel_dim, mean_output_error, shift_bias
from adaround_lightning.datamodule import capture_output
from adaround_lightning.driver import AdaroundResult
from tests.conftest import randomize_batchnorm

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
def test_driver_leaves_every_layer_unbiased_and_resume_restores_it(
    tiny_cnn: nn.Module, images: torch.Tensor, tmp_path: Path, granularity: str
) -> None:
    quant = QuantConfig(weight_bits=2, scale_method="maxabs")
    config = AdaroundConfig(
        iters=40,
        batch_size=16,
        seed=0,
        granularity=granularity,
        bias_correction=False,
        forward_batch_size=24,  # the mean is accumulated over uneven chunks (24, 24, 16)
    )
    plain = adaround(tiny_cnn, images, quant, config, CPU)
    corrected_config = AdaroundConfig(**{**config.__dict__, "bias_correction": True})
    corrected = adaround(tiny_cnn, images, quant, corrected_config, CPU, checkpoint=tmp_path)
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


def _block_net() -> nn.Sequential:
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        BasicBlock(8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    randomize_batchnorm(net, torch.Generator().manual_seed(4))
    return net.eval()


@pytest.mark.parametrize("harmful", [False, True])
def test_block_fit_keeps_a_correction_only_where_it_lowers_the_block_error(
    harmful: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adaround_lightning import driver
    from adaround_lightning.datamodule import capture_input

    if harmful:  # every measured mean error is off by +100: corrections that only do harm
        measured = driver.mean_output_error
        monkeypatch.setattr(
            driver, "mean_output_error", lambda fp, q, dim: measured(fp, q, dim) + 100.0
        )
    net = _block_net()
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    config = AdaroundConfig(
        iters=60, batch_size=16, seed=0, granularity="block", bias_correction=True
    )
    # With harmful corrections only the block is quantized: the stem's would spoil its inputs.
    quant = QuantConfig(weight_bits=2, per_channel=False, exclude=["0", "5"] if harmful else [])
    result = adaround(net, images, quant, config, CPU)
    # Float64 recomputation of the block fit's objective (squared error summed over channels,
    # averaged over the rest) on the calibration images, from the final networks.
    q_net, fp_net = result.model.double(), result.float_model.double()
    block_q, block_fp = q_net[2], fp_net[2]
    x_q = capture_input(q_net, block_q, images.double())
    target = block_fp(capture_input(fp_net, block_fp, images.double()))

    def block_error() -> float:
        with torch.no_grad():
            return float((block_q(x_q) - target).pow(2).sum(1).mean())

    final = block_error()
    # Layers fitted alone (the stem, the classifier) keep their correction: centred outputs.
    if not harmful:
        errors = _mean_errors(result, images.double())
        assert errors["0"] < 1e-4 and errors["5"] < 1e-4
    started_from = {
        name: block_fp.get_submodule(name).bias.detach().clone() for name in ("conv1", "conv2")
    }
    kept = {
        name: not torch.equal(block_q.get_submodule(name).bias, started_from[name])
        for name in started_from
    }
    if harmful:  # a shift of 100 only raises the block error: both kept out
        assert not any(kept.values())
    # The same block with the biases the fit started from (the BN-folded float biases).
    for name in ("conv1", "conv2"):
        block_q.get_submodule(name).bias.data = block_fp.get_submodule(name).bias.data.clone()
    uncorrected = block_error()
    assert final <= uncorrected * (1 + 1e-9)
