"""The block-by-block driver on tiny synthetic networks."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.datamodule import capture_input, capture_output
from adaround_lightning.module import LayerReconstruction

CPU = {"accelerator": "cpu", "devices": 1}


@pytest.fixture
def fit_counter(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    original = LayerReconstruction.on_train_end

    def counting(self: LayerReconstruction) -> None:
        counts[id(self.layer)] += 1
        original(self)

    monkeypatch.setattr(LayerReconstruction, "on_train_end", counting)
    return counts


def _float64_mse(
    fp: nn.Module, q: nn.Module, name: str, weight: torch.Tensor, act: bool, data: torch.Tensor
) -> float:
    """Independent recomputation: f_a(W_q x~) against f_a(W x) in float64."""
    q_layer, fp_layer = q.get_submodule(name), fp.get_submodule(name)
    x_q = capture_input(q, q_layer, data).double()
    target = capture_output(fp, fp_layer, data).double()
    w, b = weight.detach().double(), q_layer.bias.detach().double()
    if isinstance(q_layer, nn.Conv2d):
        out = F.conv2d(x_q, w, b, q_layer.stride, q_layer.padding, q_layer.dilation, q_layer.groups)
    else:
        out = F.linear(x_q, w, b)
    if act:
        out, target = torch.relu(out), torch.relu(target)
    return float((out - target).pow(2).mean())


def test_every_layer_once_and_adaround_beats_nearest(
    tiny_cnn: nn.Module, images: torch.Tensor, fit_counter: collections.Counter
) -> None:
    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=3),
        AdaroundConfig(iters=300, batch_size=16, lr=1e-2, seed=0),
        CPU,
    )
    names = [report.name for report in result.layers]
    assert names == ["stem.0", "depthwise", "grouped", "fc"]
    assert sorted(fit_counter.values()) == [1, 1, 1, 1]
    assert set(result.quantizers) == set(names)
    for report in result.layers:
        fq = result.quantizers[report.name]
        layer = result.model.get_submodule(report.name)
        # The network holds exactly s * q with q on the 3-bit grid.
        q = fq.integer_weight()
        assert q.min() >= -4 and q.max() <= 3
        assert torch.equal(layer.weight.detach(), q.float() * fq.scale)
        act = report.activation is not None
        nearest = fq.nearest_integer_weight().float() * fq.scale
        mse_nearest = _float64_mse(
            result.float_model, result.model, report.name, nearest, act, images
        )
        mse_ada = _float64_mse(
            result.float_model, result.model, report.name, layer.weight, act, images
        )
        assert mse_ada < mse_nearest, report.name
        assert report.mse_adaround == pytest.approx(mse_ada, rel=1e-3)
        assert report.mse_nearest == pytest.approx(mse_nearest, rel=1e-3)
        assert 0 < report.flipped_fraction < 0.5
    # The original model is untouched (BN still there).
    assert isinstance(tiny_cnn.stem[1], nn.BatchNorm2d)


def test_exclude_and_first_last_bits(
    tiny_cnn: nn.Module, images: torch.Tensor, fit_counter: collections.Counter
) -> None:
    quant = QuantConfig(
        weight_bits=4, per_channel=False, exclude=["grouped"], first_layer_bits=8, last_layer_bits=8
    )
    result = adaround(tiny_cnn, images, quant, AdaroundConfig(iters=5, batch_size=16), CPU)
    bits = {report.name: report.bits for report in result.layers}
    assert bits == {"stem.0": 8, "depthwise": 4, "fc": 8}
    assert result.skipped == {"grouped": "excluded by quant.exclude"}
    assert len(fit_counter) == 3
    # The excluded layer keeps its (BN-folded) float weight.
    assert torch.equal(result.model.grouped.weight, result.float_model.grouped.weight)
    assert result.quantizers["depthwise"].scale.dim() == 0  # per-tensor


def test_calibration_smaller_than_a_batch(tiny_cnn: nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="fewer than one batch"):
        adaround(tiny_cnn, images[:4], config=AdaroundConfig(iters=2, batch_size=16), trainer=CPU)
    with pytest.raises(ValueError, match="empty"):
        adaround(tiny_cnn, [], config=AdaroundConfig(iters=2), trainer=CPU)


def test_non_finite_weight_names_the_parameter(tiny_cnn: nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        tiny_cnn.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"fc\.weight"):
        adaround(tiny_cnn, images, config=AdaroundConfig(iters=2, batch_size=16), trainer=CPU)


def test_dataset_input_and_determinism(tiny_cnn: nn.Module, images: torch.Tensor) -> None:
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(len(images)))
    config = AdaroundConfig(iters=20, batch_size=16, seed=3)
    first = adaround(tiny_cnn, dataset, QuantConfig(weight_bits=2), config, CPU)
    second = adaround(tiny_cnn, images, QuantConfig(weight_bits=2), config, CPU)
    for name, fq in first.quantizers.items():
        assert torch.equal(fq.integer_weight(), second.quantizers[name].integer_weight())
