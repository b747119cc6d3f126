"""The predicted errors against float64 recomputations of the network's output error."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adaround_lightning.engine.mixed.sensitivity import layer_sensitivity, rounded_weights
from adaround_lightning.quant.quant_config import QuantConfig


class _Tuple(nn.Module):
    """A network whose output is not one ``(N, K)`` tensor: random-sign probes."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 12)
        self.second = nn.Linear(12, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.second(self.first(x))
        return y[:, :4].reshape(-1, 2, 2), y[:, 4:]


def _with_weight(net: nn.Module, module: nn.Module, weight: torch.Tensor, x: torch.Tensor):
    original = module.weight.data.clone()
    module.weight.data.copy_(weight)
    try:
        with torch.no_grad():
            return net(x)
    finally:
        module.weight.data.copy_(original)


def test_random_sign_probes_give_the_squared_output_error_of_a_linear_network() -> None:
    # Linear in every layer: the first-order error J dz is the exact output change, so
    # e_l(b) must equal the mean over samples of ||y(W_b) - y(W)||^2 (in float64).
    torch.manual_seed(0)
    net = _Tuple().double().eval()
    x = torch.randn(64, 6, dtype=torch.float64)
    quant = QuantConfig()
    errors = layer_sensitivity(
        net, x, {"first": net.first, "second": net.second}, [2, 3], quant, probes=400
    )
    with torch.no_grad():
        reference = net(x)
    for name, module in (("first", net.first), ("second", net.second)):
        for bits, w_b in rounded_weights(module.weight, [2, 3], quant).items():
            moved = _with_weight(net, module, w_b.double(), x)
            exact = sum(((a - b) ** 2).sum() for a, b in zip(moved, reference, strict=True))
            assert abs(errors[name][bits] / float(exact) - 1) < 0.1


def test_categorical_probes_give_twice_the_kl_divergence_for_small_errors() -> None:
    # For a classifier, E_y[((onehot(y) - p) . dlogits)^2] = dl^T (diag p - p p^T) dl, which
    # is 2 KL(p || p_q) to second order: compared at 8 bits (small errors) in float64.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 5)).double().eval()
    x = torch.randn(128, 10, dtype=torch.float64)
    quant = QuantConfig()
    errors = layer_sensitivity(net, x, {"0": net[0], "2": net[2]}, [8], quant, probes=300)
    with torch.no_grad():
        p = F.log_softmax(net(x), dim=1)
    for name, module in (("0", net[0]), ("2", net[2])):
        w_b = rounded_weights(module.weight, [8], quant)[8].double()
        q = F.log_softmax(_with_weight(net, module, w_b, x), dim=1)
        kl = float((p.exp() * (p - q)).sum())  # summed over samples, as the errors are
        assert abs(errors[name][8] / (2 * kl) - 1) < 0.15


def test_an_in_place_activation_after_the_layer_does_not_hide_its_error() -> None:
    # ReLU(inplace=True) rewrites the layer's output tensor; the error must still fall with
    # the bits as the weight error does.
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8 * 36, 4)
    ).eval()
    errors = layer_sensitivity(
        net, torch.randn(32, 3, 8, 8), {"0": net[0], "3": net[3]}, [2, 3, 4, 8], QuantConfig()
    )
    for name in ("0", "3"):
        assert errors[name][2] > errors[name][3] > errors[name][4] > errors[name][8] > 0


def test_a_layer_behind_a_saturated_activation_has_zero_error_not_an_unknown_one() -> None:
    # Hardtanh is flat outside [-1, 1]: with every pre-activation far outside, the output does
    # not move with the first layer to first order. Zero is a measurement, not a missing one.
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.Hardtanh(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        net[0].bias.fill_(100.0)
    errors = layer_sensitivity(
        net, torch.randn(16, 4), {"0": net[0], "2": net[2]}, [2], QuantConfig()
    )
    assert errors["0"] == {2: 0.0} and errors["2"][2] > 0
