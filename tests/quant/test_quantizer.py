"""AdaroundFakeQuantizer against float64 recomputations of the paper's formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaround_lightning.quant.quantizer import (
    GAMMA,
    ZETA,
    AdaroundFakeQuantizer,
    bits_to_range,
    inverse_rectified_sigmoid,
    rectified_sigmoid,
)

WEIGHTS = {
    "linear": lambda: nn.Linear(12, 6).weight,
    "conv1d": lambda: nn.Conv1d(4, 6, 3).weight,
    "conv2d": lambda: nn.Conv2d(4, 6, 3).weight,
    "grouped": lambda: nn.Conv2d(8, 6, 3, groups=2).weight,
    "depthwise": lambda: nn.Conv2d(6, 6, 3, groups=6).weight,
}


def _quantizer(bits: int, per_channel: bool) -> AdaroundFakeQuantizer:
    qmin, qmax = bits_to_range(bits)
    scheme = torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric
    return AdaroundFakeQuantizer(qscheme=scheme, quant_min=qmin, quant_max=qmax, ch_axis=0)


def _reference_scale(w: torch.Tensor, qmax: int, per_channel: bool) -> torch.Tensor:
    w = w.detach().double()
    if per_channel:
        return w.abs().flatten(1).amax(1).reshape([-1] + [1] * (w.dim() - 1)) / qmax
    return w.abs().max() / qmax


@pytest.mark.parametrize("kind", sorted(WEIGHTS))
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_init_reproduces_float_weight_and_scale_shapes(
    kind: str, bits: int, per_channel: bool
) -> None:
    torch.manual_seed(bits)
    w = WEIGHTS[kind]().detach()
    fq = _quantizer(bits, per_channel)
    soft = fq(w)
    qmin, qmax = bits_to_range(bits)
    scale = _reference_scale(w, qmax, per_channel)
    expected_shape = [w.shape[0]] + [1] * (w.dim() - 1) if per_channel else []
    assert list(fq.scale.shape) == expected_shape
    assert torch.allclose(fq.scale.double(), scale, rtol=1e-6)
    assert fq.V.shape == w.shape
    # Inside the range [qmin*s, qmax*s] the soft weight equals the float weight.
    inside = (w.double() >= qmin * scale) & (w.double() <= qmax * scale)
    assert inside.all()  # this observer never clips
    assert torch.allclose(soft.double(), w.double(), atol=1e-5 * float(scale.max()))


@pytest.mark.parametrize("per_channel", [True, False])
def test_hard_rounding_is_floor_or_ceil(per_channel: bool) -> None:
    torch.manual_seed(3)
    w = torch.randn(16, 8, 3, 3)
    fq = _quantizer(4, per_channel)
    fq(w)
    with torch.no_grad():
        fq.V.copy_(torch.randn_like(fq.V) * 5)  # arbitrary learned state
    fq.use_soft_rounding = False
    hard = fq(w)
    scale = _reference_scale(w, 7, per_channel)
    q = hard.double() / scale
    assert torch.allclose(q, torch.round(q), atol=1e-4)
    q = torch.round(q)
    # floor(W/s) or ceil(W/s): within one grid step of W/s (float32 round-off aside).
    assert ((q - w.double() / scale).abs() < 1 + 1e-5).all()
    # integer_weight is the documented formula clamp(floor(W/s) + 1[V>=0]), floor in float32.
    floor = torch.floor(w / fq.scale).double()
    expected = torch.clamp(floor + (fq.V >= 0).double(), -8, 7)
    assert torch.equal(fq.integer_weight().double(), expected)
    assert torch.equal(fq.hard_weight(), hard)


def test_nearest_matches_round_half_up() -> None:
    torch.manual_seed(4)
    w = torch.randn(10, 20)
    fq = _quantizer(3, True)
    fq(w)
    scale = _reference_scale(w, 3, True)
    expected = torch.clamp(torch.floor(w.double() / scale + 0.5), -4, 3)
    assert torch.equal(fq.nearest_integer_weight().double(), expected)
    # At initialisation the hard-rounded AdaRound weight is round-to-nearest.
    assert torch.equal(fq.integer_weight(), fq.nearest_integer_weight())


def test_rectified_sigmoid_formula_and_inverse() -> None:
    V = torch.randn(1000, dtype=torch.float64) * 4
    expected = torch.clamp(torch.sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)
    assert torch.allclose(rectified_sigmoid(V), expected)
    h = torch.rand(1000, dtype=torch.float64)
    assert torch.allclose(rectified_sigmoid(inverse_rectified_sigmoid(h)), h, atol=1e-12)
    # Edge cases of the fractional part never give NaN/Inf.
    edges = inverse_rectified_sigmoid(torch.tensor([0.0, 1.0, 1.0 + 1e-7, -1e-7]))
    assert torch.isfinite(edges).all()


def test_fractional_part_edge_case_does_not_fail() -> None:
    # W/s just below an integer gives a fractional part that rounds to 1.0 in float32.
    w = torch.tensor([[-1e-8, 1.0, -1.0, 0.5]])
    fq = _quantizer(8, False)
    out = fq(w)
    assert torch.isfinite(fq.V).all()
    assert torch.allclose(out, w, atol=1e-6)


def test_gradient_reaches_only_V() -> None:
    w = torch.randn(4, 4, requires_grad=True)
    fq = _quantizer(4, True)
    fq(w)
    fq(w).sum().backward()
    assert fq.V.grad is not None and fq.V.grad.abs().sum() > 0
    assert w.grad is None or torch.count_nonzero(w.grad) == 0


def test_observer_runs_once() -> None:
    w = torch.randn(4, 4)
    fq = _quantizer(4, True)
    fq(w)
    with torch.no_grad():
        fq.V.fill_(3.0)
    fq(w * 10)  # must not re-initialise V or rescale
    assert torch.all(fq.V == 3.0)


def test_state_dict_round_trip() -> None:
    w = torch.randn(6, 3, 3, 3)
    fq = _quantizer(4, True)
    fq(w)
    other = _quantizer(4, True)
    other.load_state_dict(fq.state_dict())
    assert torch.equal(other.integer_weight(), fq.integer_weight())
    assert torch.equal(other.scale, fq.scale)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"qscheme": torch.per_tensor_affine},
        {"qscheme": torch.per_channel_affine},
        {"quant_min": 0, "quant_max": 15},
        {"quant_min": 7, "quant_max": -8},
        {"quant_min": -300, "quant_max": 300},
    ],
)
def test_user_errors_are_value_errors(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AdaroundFakeQuantizer(**kwargs)


@pytest.mark.parametrize("bits", [1, 9, 4.0, True])
def test_bits_out_of_range(bits: object) -> None:
    with pytest.raises(ValueError, match="2 to 8"):
        bits_to_range(bits)  # type: ignore[arg-type]


def test_non_finite_weight_is_rejected() -> None:
    fq = _quantizer(4, True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fq(torch.tensor([[1.0, float("nan")]]))


def test_the_package_does_not_use_the_deprecated_torch_ao_namespace() -> None:
    import re
    from pathlib import Path

    import adaround_lightning

    package = Path(adaround_lightning.__file__).parent
    imports = re.compile(r"^\s*(import torch\.ao|from torch\.ao|from torch import ao)", re.M)
    users = [
        str(p.relative_to(package)) for p in package.rglob("*.py") if imports.search(p.read_text())
    ]
    assert not users, f"torch.ao is imported in {users}"
    # Once torch drops the namespace there is nothing left to subclass.
    ao_quantization = getattr(getattr(torch, "ao", None), "quantization", None)
    legacy = getattr(ao_quantization, "FakeQuantize", None)
    assert legacy is None or not issubclass(AdaroundFakeQuantizer, legacy)


def test_checkpoints_of_the_torch_ao_based_class_load() -> None:
    # The buffers torch.ao's FakeQuantize and observers gave the class: what older run dirs and
    # checkpoints hold (the per-channel observer's min/max are one value per channel).
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    fq = _quantizer(4, True)
    fq(w)
    state = fq.state_dict()
    assert set(state) == {
        "V",
        "fake_quant_enabled",
        "observer_enabled",
        "scale",
        "zero_point",
        "weight_floor",
        "nearest_round_up",
        "activation_post_process.eps",
        "activation_post_process.min_val",
        "activation_post_process.max_val",
    }
    assert state["fake_quant_enabled"].dtype == state["observer_enabled"].dtype == torch.uint8
    assert state["activation_post_process.min_val"].shape == (4,)
    fresh = _quantizer(4, True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.integer_weight(), fq.integer_weight())
    assert torch.equal(fresh.activation_post_process.max_val, w.amax(1))


def test_the_reference_switches_behave_like_fake_quantize() -> None:
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    fq = _quantizer(3, True)
    fq(w)
    fq.disable_fake_quant()
    assert fq(w) is w  # off: the weight passes through
    fq.enable_fake_quant()
    assert not torch.equal(fq(w), w)
    first_V = fq.V.detach().clone()
    fq.enable_observer()  # on purpose: the next forward re-initialises from a new weight
    other = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    fq(other)
    assert not torch.equal(fq.V.detach(), first_V) and fq.observer_enabled[0] == 0
    # The observer keeps a running min/max, as torch's MinMaxObserver does: both weights count.
    both = torch.maximum(w.abs(), other.abs()).double()
    expected = both.amax(1, keepdim=True) / bits_to_range(3)[1]
    assert torch.allclose(fq.scale.double(), expected, rtol=1e-6)
