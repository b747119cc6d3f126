"""``nn.MultiheadAttention`` with its projections as modules, so that they can be quantized.

``nn.MultiheadAttention`` passes ``in_proj_weight`` (or ``q/k/v_proj_weight``) and
``out_proj.weight`` to ``F.multi_head_attention_forward``: no module is called with them, so no
hook sees them and they would stay in float. :class:`SeparateProjectionAttention` computes the
same function with four ``nn.Linear`` modules (``q_proj``, ``k_proj``, ``v_proj``,
``out_proj``) and ``F.scaled_dot_product_attention``;
:func:`separate_attention_projections` swaps it in for every ``nn.MultiheadAttention`` of a
network, with the same weights.

Shapes: ``query`` is ``(N, L, E)`` when ``batch_first`` else ``(L, N, E)`` (or unbatched
``(L, E)``); ``key``/``value`` have ``S`` positions; the projections give ``(N, heads, L, d)`` with
``d = E / heads``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from adaround_lightning.graph.bn_fold import set_submodule

__all__ = ["SeparateProjectionAttention", "separate_attention_projections"]

log = logging.getLogger(__name__)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.weight.requires_grad_(weight.requires_grad)
    return layer


def _additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """One float mask ``(N, heads | 1, L | 1, S)`` added to the logits (bool True: masked)."""

    def as_float(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        return mask.to(dtype)

    total = None
    if attn_mask is not None:
        mask = as_float(attn_mask)
        # (L, S) for every batch and head, or (N * heads, L, S).
        total = mask.view(batch, heads, *mask.shape[-2:]) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        padding = as_float(key_padding_mask).view(batch, 1, 1, -1)
        total = padding if total is None else total + padding
    return total


class SeparateProjectionAttention(nn.Module):
    """Multi-head attention with ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` modules.

    Numerically the function of the ``nn.MultiheadAttention`` it replaces (see
    :meth:`from_attention`), with the same call signature and return value
    ``(output, weights or None)``.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
        >>> attention = SeparateProjectionAttention.from_attention(mha).eval()
        >>> x = torch.randn(3, 5, 8)
        >>> torch.allclose(attention(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)
        True
    """

    def __init__(
        self,
        q_proj: nn.Linear,
        k_proj: nn.Linear,
        v_proj: nn.Linear,
        out_proj: nn.Linear,
        num_heads: int,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = q_proj, k_proj, v_proj, out_proj
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        # What nn.TransformerEncoderLayer reads of its attention before choosing its fused
        # fast path, which needs a packed in_proj_weight: not packed, so it takes the module path.
        self.embed_dim = out_proj.out_features
        self._qkv_same_embed_dim = False
        self.in_proj_weight: torch.Tensor | None = None
        self.in_proj_bias: torch.Tensor | None = None

    @classmethod
    def from_attention(cls, attention: nn.MultiheadAttention) -> SeparateProjectionAttention:
        """The same attention with copies of ``attention``'s weights in four Linear modules.

        Raises:
            ValueError: For ``add_bias_kv`` or ``add_zero_attn`` (not supported).
        """
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported")
        E = attention.embed_dim
        if attention._qkv_same_embed_dim:
            weights = attention.in_proj_weight.detach().split(E)
        else:
            weights = (attention.q_proj_weight, attention.k_proj_weight, attention.v_proj_weight)
        biases = (
            attention.in_proj_bias.detach().split(E)
            if attention.in_proj_bias is not None
            else (None, None, None)
        )
        projections = [_linear(w.detach(), b) for w, b in zip(weights, biases, strict=True)]
        out = attention.out_proj
        return cls(
            *projections,
            _linear(out.weight.detach(), None if out.bias is None else out.bias.detach()),
            num_heads=attention.num_heads,
            dropout=attention.dropout,
            batch_first=attention.batch_first,
        ).train(attention.training)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, E)`` -> ``(N, heads, T, d)``."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention of ``query`` over ``key``/``value``, as ``nn.MultiheadAttention.forward``."""
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            key_padding_mask = None if key_padding_mask is None else key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        # (N, heads, L | S, d)
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        mask = _additive_mask(attn_mask, key_padding_mask, q.shape[0], self.num_heads, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (N, heads, L, S)
            if mask is not None:
                logits = logits + mask
            weights = F.softmax(logits, dim=-1)
            context = F.dropout(weights, dropout, self.training) @ v
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            causal = is_causal and mask is None
            context = F.scaled_dot_product_attention(q, k, v, mask, dropout, is_causal=causal)
        output = self.out_proj(context.transpose(1, 2).flatten(-2))  # (N, L, E)
        if not batched:
            return output[0], None if weights is None else weights[0]
        if not self.batch_first:
            output = output.transpose(0, 1)
        return output, weights


def separate_attention_projections(model: nn.Module) -> dict[str, str]:
    """Swap a :class:`SeparateProjectionAttention` in for each ``nn.MultiheadAttention``.

    Returns:
        The attention modules that could not be replaced, name -> reason (their weights stay in
        float and are reported by the coverage).

    Example:
        >>> net = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2)})
        >>> separate_attention_projections(net), type(net["attn"]).__name__
        ({}, 'SeparateProjectionAttention')
    """
    kept: dict[str, str] = {}
    replaced = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.MultiheadAttention):
            continue
        try:
            set_submodule(model, name, SeparateProjectionAttention.from_attention(module))
            replaced += 1
        except ValueError as error:
            kept[name] = f"nn.MultiheadAttention with {error}, left in float"
    if kept:
        log.warning(
            "left as nn.MultiheadAttention (weights in float): %s",
            "; ".join(f"{name} ({why})" for name, why in kept.items()),
        )
    if replaced:
        log.info(
            "%d nn.MultiheadAttention modules run as q/k/v/out projection modules "
            "(the same function) so that their weights are quantized",
            replaced,
        )
    return kept
