"""How much each layer, rounded to each candidate grid, moves the network's output.

For layer ``l`` with output ``z`` and round-to-nearest weights on its ``b``-bit grid (the grid
the walk starts from), the output error ``dz = f(x; W_b) - f(x; W)`` reaches the network's
output ``y`` as ``J dz`` to first order, ``J = dy/dz``. The predicted error is the Fisher
(Gauss-Newton) form of the network-output loss,

    e_l(b) = E_x E_r [ (r^T J dz)^2 ] = E_x E_r [ (g . dz)^2 ],    g = J^T r,

so one backward pass per probe ``r`` gives ``g`` for every layer at once and each candidate
costs one forward pass of the layer alone. For a classifier (one ``(N, K)`` output) ``r`` is
``onehot(y) - p`` with ``y`` drawn from the float network's own ``p = softmax``: ``e`` is then
twice the KL divergence of the prediction (the Fisher information of a categorical output, no
label needed). For any other output, ``r`` is a random sign per element: ``e`` is the expected
squared output error ``||J dz||^2``. Errors of several layers are taken as additive
(:mod:`~adaround_lightning.engine.mixed.allocation`).

Example:
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    >>> errors = layer_sensitivity(net, torch.randn(64, 8), {"0": net[0], "2": net[2]},
    ...                            [2, 8], QuantConfig())
    >>> errors["0"][2] > errors["0"][8] > 0
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from adaround_lightning.graph.outputs import output_tensors
from adaround_lightning.quant.factory import quantizer_for_weight
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = ["layer_sensitivity", "rounded_weights"]


def rounded_weights(
    weight: torch.Tensor, candidates: Sequence[int], quant: QuantConfig
) -> dict[int, torch.Tensor]:
    """Round-to-nearest ``weight`` on its grid at each candidate (``quant``'s scale method)."""
    return {
        bits: quantizer_for_weight(
            weight.detach(), bits, quant.per_channel, quant.scale_method, quant.group_size
        )
        .nearest_weight()
        .to(weight.dtype)
        for bits in candidates
    }


def _probe(outputs: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    if len(outputs) == 1 and outputs[0].dim() == 2 and outputs[0].shape[1] > 1:
        p = F.softmax(outputs[0].detach().float(), dim=1)
        drawn = torch.multinomial(p, 1, generator=generator).squeeze(1)
        return [(F.one_hot(drawn, p.shape[1]).to(p) - p).to(outputs[0].dtype)]
    return [
        torch.randint(0, 2, y.shape, generator=generator, device=y.device).to(y.dtype) * 2 - 1
        for y in outputs
    ]


class _Recorder:
    """Forward hooks that keep each layer's input and output of the current batch."""

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in layers.items()
        ]

    def _hook(self, name: str):
        def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            # The network goes on with a copy: an in-place activation after the layer
            # (ReLU(inplace=True)) would otherwise change the output kept here.
            self.seen[name] = (args[0].detach(), output)
            return output.clone()

        return keep

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _batch_errors(
    model: nn.Module,
    batch: torch.Tensor,
    layers: Mapping[str, nn.Module],
    weights: Mapping[str, Mapping[int, torch.Tensor]],
    probes: int,
    generator: torch.Generator,
    sums: dict[str, dict[int, torch.Tensor | float]],
    reached: set[str],
) -> None:
    recorder = _Recorder(layers)
    try:
        with torch.enable_grad():
            outputs = output_tensors(model(batch.requires_grad_(True)))
    finally:
        recorder.close()
    names = [name for name in layers if name in recorder.seen]
    produced = [recorder.seen[name][1] for name in names]
    per_probe = []  # per probe, g for every layer (None: the output does not depend on it)
    for probe in range(probes):
        r = _probe(outputs, generator)
        with torch.enable_grad():
            dot = sum((y * r_y).sum() for y, r_y in zip(outputs, r, strict=True))
            per_probe.append(
                torch.autograd.grad(
                    dot, produced, retain_graph=probe < probes - 1, allow_unused=True
                )
            )
    for index, name in enumerate(names):
        gs = [grads[index] for grads in per_probe if grads[index] is not None]
        if not gs:
            continue
        reached.add(name)  # a zero gradient is a measurement too
        x, z = recorder.seen[name]
        for bits, w_b in weights[name].items():
            # dz once per batch, for every probe; summed on the device, read once at the end.
            dz = functional_call(layers[name], {"weight": w_b}, (x,)) - z.detach()
            total = sum(((g * dz).flatten(1).sum(1) ** 2).sum() for g in gs)
            sums[name][bits] = sums[name][bits] + total.double()


@torch.no_grad()
def layer_sensitivity(
    model: nn.Module,
    images: torch.Tensor,
    layers: Mapping[str, nn.Module],
    candidates: Sequence[int],
    quant: QuantConfig,
    batch_size: int = 32,
    probes: int = 2,
    seed: int = 0,
) -> dict[str, dict[int, float]]:
    """The predicted network-output error ``e_l(b)`` of each layer alone at each candidate.

    Args:
        model: The float network (BN folded), in eval mode; its parameters are not changed.
        images: Calibration inputs ``(N, ...)`` on the model's device.
        layers: Name -> the ``Conv``/``Linear`` module of each layer to rank.
        candidates: Bit widths.
        quant: The grid settings (per channel, scale method, group size).
        batch_size: Samples per forward/backward pass.
        probes: Backward passes (probe vectors ``r``) per batch.
        seed: Seed of the probes.

    Returns:
        Name -> bits -> error summed over the samples and averaged over the probes (divide by
        the samples for the mean); a layer no gradient reached is left out.
    """
    generator = torch.Generator(device=images.device).manual_seed(seed)
    weights = {
        name: rounded_weights(module.weight, candidates, quant) for name, module in layers.items()
    }
    sums: dict[str, dict[int, torch.Tensor | float]] = {
        name: dict.fromkeys(candidates, 0.0) for name in layers
    }
    seen: set[str] = set()
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].clone()
        _batch_errors(model, batch, layers, weights, probes, generator, sums, seen)
    return {
        name: {bits: float(total) / probes for bits, total in sums[name].items()}
        for name in layers
        if name in seen
    }
