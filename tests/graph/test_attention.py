"""SeparateProjectionAttention computes nn.MultiheadAttention's function (float64, fresh inputs)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adaround_lightning.graph.attention import (
    SeparateProjectionAttention,
    separate_attention_projections,
)

E, HEADS, L, S, N = 12, 3, 5, 7, 4


def _pair(**kwargs: object) -> tuple[nn.MultiheadAttention, SeparateProjectionAttention]:
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, HEADS, **kwargs).double().eval()
    with torch.no_grad():  # torch initialises the biases to zero: make them matter
        for name, parameter in reference.named_parameters():
            if "bias" in name:
                parameter.normal_()
    return reference, SeparateProjectionAttention.from_attention(reference).eval()


def _inputs(batch_first: bool, kdim: int = E, vdim: int = E) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)

    def draw(length: int, dim: int) -> torch.Tensor:
        shape = (N, length, dim) if batch_first else (length, N, dim)
        return torch.randn(shape, generator=generator, dtype=torch.float64)

    return draw(L, E), draw(S, kdim), draw(S, vdim)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_the_same_outputs_and_weights(batch_first: bool, bias: bool, need_weights: bool) -> None:
    reference, attention = _pair(batch_first=batch_first, bias=bias)
    q, k, v = _inputs(batch_first)
    expected, expected_weights = reference(q, k, v, need_weights=need_weights)
    output, weights = attention(q, k, v, need_weights=need_weights)
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights, rtol=1e-10, atol=1e-10)
    else:
        assert weights is None


def test_separate_key_and_value_sizes_and_per_head_weights() -> None:
    reference, attention = _pair(batch_first=True, kdim=5, vdim=9)
    q, k, v = _inputs(True, kdim=5, vdim=9)
    expected, expected_weights = reference(q, k, v, average_attn_weights=False)
    output, weights = attention(q, k, v, average_attn_weights=False)
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(weights, expected_weights, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "per_head"])
def test_masks(need_weights: bool, mask_kind: str) -> None:
    reference, attention = _pair(batch_first=True)
    q, k, v = _inputs(True)
    generator = torch.Generator().manual_seed(2)
    if mask_kind == "bool":
        attn_mask = torch.rand(L, S, generator=generator) > 0.7
        attn_mask[:, 0] = False  # every query sees one key
    elif mask_kind == "float":
        attn_mask = torch.randn(L, S, generator=generator, dtype=torch.float64)
    else:
        attn_mask = torch.randn(N * HEADS, L, S, generator=generator, dtype=torch.float64)
    padding = torch.zeros(N, S, dtype=torch.bool)
    padding[:, -2:] = True
    if attn_mask.dtype != torch.bool:  # the same kind of mask for both (torch's advice)
        padding = torch.zeros(N, S, dtype=torch.float64).masked_fill(padding, float("-inf"))
    kwargs = {"attn_mask": attn_mask, "key_padding_mask": padding, "need_weights": need_weights}
    expected, _ = reference(q, k, v, **kwargs)
    output, _ = attention(q, k, v, **kwargs)
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)


def test_unbatched_input() -> None:
    reference, attention = _pair()
    q = torch.randn(L, E, dtype=torch.float64)
    torch.testing.assert_close(attention(q, q, q)[0], reference(q, q, q)[0], rtol=1e-10, atol=1e-10)


def test_every_attention_of_a_network_is_replaced_and_the_network_computes_the_same() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, HEADS, dim_feedforward=24, batch_first=True)
    network = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).double().eval()
    rewritten = copy.deepcopy(network)
    assert separate_attention_projections(rewritten) == {}
    assert not any(isinstance(m, nn.MultiheadAttention) for m in rewritten.modules())
    x = torch.randn(N, L, E, dtype=torch.float64)
    torch.testing.assert_close(rewritten(x), network(x), rtol=1e-10, atol=1e-10)


def test_unsupported_options_are_kept_with_a_reason() -> None:
    network = nn.ModuleDict({"attn": nn.MultiheadAttention(E, HEADS, add_bias_kv=True)})
    kept = separate_attention_projections(network)
    assert isinstance(network["attn"], nn.MultiheadAttention)
    assert "add_bias_kv" in kept["attn"] and "left in float" in kept["attn"]
