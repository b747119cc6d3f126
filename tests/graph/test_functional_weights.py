"""Functional weight uses: found, routed through their layers, and the function unchanged."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaround_lightning.graph.functional_weights import (
    functional_weight_uses,
    route_functional_weights,
)
from tests.helpers.models import tiny_swin


class _Functional(nn.Module):
    """Uses its layers' weights functionally, and calls one of them as a module too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.strided = nn.Conv2d(4, 4, 3)
        self.qkv = nn.Linear(4, 12)
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
        # Not the layer's own convolution (padding 1, the layer's is 0): left as written.
        x = x + F.conv2d(x, self.strided.weight, self.strided.bias, stride=1, padding=1)
        tokens = x.flatten(2).transpose(1, 2)  # (N, HW, 4)
        q, k, v = F.linear(tokens, self.qkv.weight, self.qkv.bias).chunk(3, dim=-1)
        tokens = F.softmax(q @ k.transpose(1, 2), dim=-1) @ v
        return self.proj(tokens) + F.linear(tokens, self.proj.weight, self.proj.bias)


def _calls(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    counts: dict[str, int] = {}
    handles = [
        m.register_forward_hook(lambda *_, n=n: counts.__setitem__(n, counts.get(n, 0) + 1))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    model(x)
    for handle in handles:
        handle.remove()
    return counts


def test_functional_uses_are_routed_through_their_layers_with_the_same_function() -> None:
    torch.manual_seed(0)
    model = _Functional().double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    expected = model(x)
    uses = {u.weight: u for u in functional_weight_uses(model, x)}
    assert set(uses) == {"conv.weight", "strided.weight", "qkv.weight", "proj.weight"}
    left = route_functional_weights(model, x)
    assert [u.weight for u in left] == ["strided.weight"]
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    # Hooks now see each routed call once; proj's own call is not doubled.
    assert _calls(model, x) == {"conv": 1, "qkv": 1, "proj": 2}
    # A weight changed in place (as the walk rounds it) takes effect through the route.
    with torch.no_grad():
        model.qkv.weight.zero_()
    assert not torch.equal(model(x), expected)


def test_routing_survives_deepcopy_and_pickling() -> None:
    torch.manual_seed(0)
    model = _Functional().eval()
    x = torch.randn(2, 3, 5, 5)
    route_functional_weights(model, x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert _calls(copied, x) == {"conv": 1, "qkv": 1, "proj": 2}
        torch.testing.assert_close(copied(x), model(x), rtol=0, atol=0)


def test_a_routed_call_stops_cleanly_when_a_hook_raises() -> None:
    torch.manual_seed(0)
    model = _Functional().eval()
    x = torch.randn(2, 3, 5, 5)
    route_functional_weights(model, x)

    def stop(*_: object) -> None:
        raise KeyError("stop")

    handle = model.qkv.register_forward_pre_hook(stop)
    with pytest.raises(KeyError):
        model(x)
    handle.remove()
    # No mode was left active: plain F.linear outside the model is not routed.
    assert _calls(model, x) == {"conv": 1, "qkv": 1, "proj": 2}
    torch.testing.assert_close(F.linear(x, torch.ones(1, 5)), x.sum(-1, keepdim=True))


@pytest.mark.parametrize("version", [1, 2])
def test_swin_attention_runs_through_its_qkv_and_proj_layers(version: int) -> None:
    torch.manual_seed(0)
    model = tiny_swin(version, num_classes=3).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("qkv.bias"):
                parameter.normal_()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = model(x)
    assert route_functional_weights(model, x) == []
    assert functional_weight_uses(model, x) == []
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    calls = _calls(model, x)
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".attn." in n]
    assert attention and all(calls.get(n) == 1 for n in attention if "cpb_mlp" not in n)
