"""The block-by-block walk on tiny synthetic networks."""

from __future__ import annotations

import collections
import copy
import gc

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from adaround_lightning import AdaroundConfig, EngineConfig, QuantConfig, adaround
from adaround_lightning.engine.fit.reconstruction import LayerReconstruction
from adaround_lightning.graph.capture import capture_input, capture_output
from adaround_lightning.torch_frontend.torch_walk import CalibrationWalk

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
    # maxabs: on the default (finer) minmax grid the 32-weight fc can end at nearest's rounding.
    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=3, scale_method="maxabs"),
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


def test_block_granularity_fits_each_block_once_and_beats_nearest() -> None:
    from torchvision.models.resnet import BasicBlock

    from adaround_lightning.engine.fit.reconstruction import BlockReconstruction

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        BasicBlock(8, 8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    images = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    fits: list[str] = []
    original = BlockReconstruction.on_train_end

    def counting(self: BlockReconstruction) -> None:
        fits.append(self.name)
        original(self)

    BlockReconstruction.on_train_end = counting  # type: ignore[method-assign]
    try:
        result = adaround(
            net,
            images,
            QuantConfig(weight_bits=2),
            AdaroundConfig(iters=200, batch_size=16, lr=1e-2, granularity="block"),
            CPU,
        )
    finally:
        BlockReconstruction.on_train_end = original  # type: ignore[method-assign]
    assert fits == ["2"]  # one fit for the BasicBlock; the stem and fc are fitted as layers
    assert [r.name for r in result.layers] == ["0", "2.conv1", "2.conv2", "5"]
    # The block's output error with AdaRound's integers is below round-to-nearest's (float64).
    block_q, block_fp = result.model[2].double(), result.float_model[2].double()
    x_q = capture_input(result.model.double(), block_q, images.double())
    x_fp = capture_input(result.float_model.double(), block_fp, images.double())
    target = block_fp(x_fp)
    nearest = copy.deepcopy(block_q)
    for name in ("conv1", "conv2"):
        fq = result.quantizers[f"2.{name}"]
        nearest.get_submodule(name).weight.data = (
            fq.nearest_integer_weight().double() * fq.scale.double()
        )
    with torch.no_grad():
        assert (block_q(x_q) - target).pow(2).mean() < (nearest(x_q) - target).pow(2).mean()


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch", ["mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5", "regnet_x_400mf"]
)
def test_other_torchvision_classifiers_calibrate_block_by_block(arch: str) -> None:
    import torchvision

    from adaround_lightning.graph.trace import BLOCK_TYPES

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    images = torch.randn(16, 3, 64, 64)
    result = adaround(
        model,
        images,
        QuantConfig(weight_bits=4),
        AdaroundConfig(iters=2, batch_size=8, num_samples=16),
        CPU,
        progress=False,
    )
    layers = [
        n for n, m in result.float_model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    assert [r.name for r in result.layers] == layers  # every layer, in execution order
    assert any(isinstance(m, BLOCK_TYPES) for m in model.modules())
    for name, fq in result.quantizers.items():
        weight = result.model.get_submodule(name).weight
        assert torch.equal(weight, fq.integer_weight().float() * fq.scale)
    with torch.no_grad():
        assert torch.isfinite(result.model(images)).all()


@pytest.mark.parametrize("budget", ["fit", "layer"])
def test_a_block_reports_the_steps_of_its_joint_fit(budget: str) -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=4).eval()
    images = torch.randn(32, 3, 32, 32)
    config = AdaroundConfig(iters=3, batch_size=16, block_budget=budget)
    cpu, engine = {"accelerator": "cpu"}, EngineConfig(steps_per_batch=1)
    result = adaround(model, images, config=config, trainer=cpu, progress=False, engine=engine)
    trace_blocks = {}
    for report in result.layers:
        block = report.name.rsplit(".block.", 1)[0] if ".block." in report.name else report.name
        trace_blocks.setdefault(block, []).append(report)
    multi = [reports for reports in trace_blocks.values() if len(reports) > 1]
    assert multi, "mobilenet_v3_small has multi-layer blocks"
    for reports in multi:
        assert {r.iters for r in reports} == {3 * len(reports) if budget == "layer" else 3}
        assert len({r.steps_run for r in reports}) == 1  # one fit
    singles = [reports[0] for reports in trace_blocks.values() if len(reports) == 1]
    assert singles and all(r.iters == 3 for r in singles)


def test_the_walk_collects_with_older_objects_frozen_and_unfreezes_them(
    tiny_cnn: nn.Module, images: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen_at_release: list[int] = []
    release = CalibrationWalk.release_fit_memory

    def recording(self: CalibrationWalk) -> None:
        frozen_at_release.append(gc.get_freeze_count())
        release(self)

    monkeypatch.setattr(CalibrationWalk, "release_fit_memory", recording)
    adaround(tiny_cnn, images, config=AdaroundConfig(iters=2, batch_size=16), trainer=CPU)
    assert frozen_at_release and min(frozen_at_release) > 0  # each block's collection is cheap
    assert gc.get_freeze_count() == 0  # nothing stays frozen after the walk
