"""Where a quantized network stops generalising: each block's error on seen and unseen images.

Run as::

    python -m adaround_lightning.benchmarks.block_errors --arch mobilenet_v2 \
        --checkpoint CKPT/model.pt --bits 2 [--seed 0] [--held-out 2000] [--out FILE]

It runs the walk (block granularity, per channel, float activations, as ``ours.py``), then, on
the calibration images and on ``--held-out`` test images, for every fitted block ``b``:

* **local** error ``||B~_b(x_b) - B_b(x_b)||^2 / ||B_b(x_b)||^2``: the quantized block on the
  *float* network's input ``x_b``, so only this block's own rounding;
* **accumulated** error ``||B~_b(x~_b) - B_b(x_b)||^2 / ||B_b(x_b)||^2``: the quantized
  network's block output against the float network's, every earlier block's error included
  (what the walk fits: it trains ``B~_b`` on ``x~_b`` towards ``B_b(x_b)``, so it also learns
  to cancel the error it receives);
* and the network output's divergence (:func:`output_divergence`, KL for class scores).

A local error the same on both sets and an accumulated one that grows on the unseen images says
that the blocks' own roundings generalise and their cancelling of upstream error does not.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch import nn

from adaround_lightning.api import adaround
from adaround_lightning.benchmarks.common import build_model, fashion_mnist_data
from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.fit.network_refinement import output_divergence
from adaround_lightning.engine.fit.trainer import quiet_lightning
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = ["BlockError", "block_errors", "fitted_blocks", "main"]

log = logging.getLogger(__name__)


@dataclass
class BlockError:
    """One block's relative squared errors on one image set (see the module docstring)."""

    block: str
    local: float
    accumulated: float


class _BlockIO:
    """Forward hooks keeping each named block's first positional input and its output."""

    def __init__(self, network: nn.Module, blocks: list[str]) -> None:
        self.seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [
            network.get_submodule(name).register_forward_hook(self._keeper(name)) for name in blocks
        ]

    def _keeper(self, name: str) -> Callable[..., None]:
        def keep(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            # Copies: an in-place activation after the block (ReLU6 behind a folded BN in
            # MobileNetV2) would change the kept output before it is compared.
            self.seen[name] = (args[0].clone(), output.clone())

        return keep

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def block_errors(
    fp_model: nn.Module,
    q_model: nn.Module,
    blocks: list[str],
    images: torch.Tensor,
    chunk: int = 256,
) -> tuple[list[BlockError], float]:
    """Each block's local and accumulated relative error, and the output divergence.

    Blocks are modules of both networks (same names) taking one tensor input.

    Args:
        fp_model: The float network.
        q_model: The quantized network.
        blocks: Module names, in network order.
        images: The images, ``(N, ...)``.
        chunk: Images per forward pass.

    Returns:
        One :class:`BlockError` per block, and the mean output divergence over the images.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
        >>> errors, divergence = block_errors(net, net, ["0", "2"], torch.randn(8, 4))
        >>> [e.accumulated for e in errors], divergence
        ([0.0, 0.0], 0.0)
    """
    sums = {name: torch.zeros(3, dtype=torch.float64) for name in blocks}  # local, acc, norm
    divergence = 0.0
    fp_io, q_io = _BlockIO(fp_model, blocks), _BlockIO(q_model, blocks)
    try:
        for start in range(0, len(images), chunk):
            x = images[start : start + chunk]
            divergence += float(output_divergence(q_model(x), fp_model(x))) * len(x)
            for name in blocks:
                fp_input, target = fp_io.seen[name]
                # Read before the local pass below: its hook overwrites what q_io keeps.
                accumulated = q_io.seen[name][1]
                own = q_model.get_submodule(name)(fp_input)
                target64 = target.double()
                sums[name] += torch.stack(
                    [
                        (own.double() - target64).square().sum(),
                        (accumulated.double() - target64).square().sum(),
                        target64.square().sum(),
                    ]
                )
    finally:
        fp_io.remove()
        q_io.remove()
    errors = []
    for name in blocks:
        local, accumulated, norm = (float(v) for v in sums[name])
        norm = max(norm, 1e-30)
        errors.append(BlockError(name, local / norm, accumulated / norm))
    return errors, divergence / max(1, len(images))


def fitted_blocks(layers: Sequence[object]) -> list[str]:
    """The walk's blocks in order: each layer's ``block``, or the layer alone where it has none.

    Example:
        >>> from types import SimpleNamespace as R
        >>> fitted_blocks([R(name="a.0", block="a"), R(name="fc", block=None)])
        ['a', 'fc']
    """
    names: list[str] = []
    for layer in layers:
        name = getattr(layer, "block", None) or layer.name  # type: ignore[attr-defined]
        if name not in names:
            names.append(name)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--held-out", type=int, default=2000, help="test images compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    model = build_model(args.arch, args.checkpoint)
    calib, test = fashion_mnist_data("fashion_mnist", args.root, args.num_samples)
    held_out = torch.stack([test[i][0] for i in range(min(args.held_out, len(test)))])
    config = AdaroundConfig(iters=args.iters, num_samples=len(calib), seed=args.seed)
    with quiet_lightning():
        L.seed_everything(args.seed, verbose=False)
    quant = QuantConfig(weight_bits=args.bits, per_channel=True)
    result = adaround(model, calib, quant, config, {"accelerator": "cpu"}, progress=False)
    blocks = fitted_blocks(result.layers)
    rows = []
    for images_name, images in (("calibration", calib), ("held_out", held_out)):
        errors, divergence = block_errors(result.float_model, result.model, blocks, images)
        rows.append({"images": images_name, "count": len(images), "divergence": divergence})
        rows[-1]["blocks"] = [asdict(error) for error in errors]
    _log_table(rows)
    if args.out is not None:
        record = {"arch": args.arch, "bits": args.bits, "seed": args.seed, "sets": rows}
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    return 0


def _log_table(rows: list[dict]) -> None:
    seen, unseen = rows
    log.info(
        "output divergence: calibration %.5f, held out %.5f",
        seen["divergence"],
        unseen["divergence"],
    )
    log.info("%-24s %10s %10s %10s %10s", "block", "local cal", "local held", "acc cal", "acc held")
    for a, b in zip(seen["blocks"], unseen["blocks"], strict=True):
        log.info(
            "%-24s %10.5f %10.5f %10.5f %10.5f",
            a["block"],
            a["local"],
            b["local"],
            a["accumulated"],
            b["accumulated"],
        )


if __name__ == "__main__":
    raise SystemExit(main())
