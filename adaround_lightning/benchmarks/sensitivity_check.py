r"""Does the sensitivity predict? Predicted errors against measured one-layer accuracy drops.

For one Fashion-MNIST checkpoint: the predicted error ``e_l(b)`` of every layer
(:func:`~adaround_lightning.engine.mixed.sensitivity.layer_sensitivity`, the pass mixed
precision runs, on ``--num-samples`` calibration images), then for each layer alone rounded to
nearest on its ``b``-bit grid (every other layer in float) the top-1 drop on the 10k test
images. Prints the Spearman rank correlation of the two per ``b``, beside that of a naive
proxy (the relative weight error ``||W_b - W||^2 / ||W||^2``), and writes one JSON line per
layer and bits to ``--out``.

Example:
    python -m adaround_lightning.benchmarks.sensitivity_check --arch resnet18 \
        --checkpoint CKPT/model.pt --bits 2 3 --out sensitivity_resnet18.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaround_lightning.app.evaluate import evaluate
from adaround_lightning.benchmarks.common import ARCHS, build_model, fashion_mnist_data
from adaround_lightning.engine.mixed.sensitivity import layer_sensitivity, rounded_weights
from adaround_lightning.graph.trace import trace_network
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.torch_frontend.networks import float_and_quantized

__all__ = ["main", "spearman"]

log = logging.getLogger(__name__)


def _ranks(values: list[float]) -> np.ndarray:
    # Average ranks: tied values share the mean of their positions.
    array = np.asarray(values, dtype=np.float64)
    order = array.argsort(kind="stable")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(len(array), dtype=np.float64)
    for value in np.unique(array):
        tied = array == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (Pearson's of the average ranks).

    Example:
        >>> round(spearman([1, 2, 3, 4], [10, 20, 30, 25]), 3)
        0.8
    """
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _top1(model: torch.nn.Module, test: Any) -> float:
    return evaluate(model, test, 10, torch.device("cpu"), 500)["top1"]


def _one_layer_drops(
    model: torch.nn.Module, layers: dict[str, torch.nn.Module], bits: list[int], test: Any
) -> tuple[float, dict[str, dict[int, dict[str, float]]]]:
    fp32 = _top1(model, test)
    measured: dict[str, dict[int, dict[str, float]]] = {}
    for name, module in layers.items():
        original = module.weight.data.clone()
        for b, w_b in rounded_weights(original, bits, QuantConfig()).items():
            module.weight.data.copy_(w_b)
            drop = fp32 - _top1(model, test)
            relative = float(((w_b - original) ** 2).sum() / (original**2).sum())
            measured.setdefault(name, {})[b] = {"drop": drop, "weight_error": relative}
            log.info("%s W%d alone: top-1 drop %.2f", name, b, drop)
        module.weight.data.copy_(original)
    return fp32, measured


def main(argv: list[str] | None = None) -> int:
    """Run the check; print the rank correlations."""
    parser = argparse.ArgumentParser(
        prog="python -m adaround_lightning.benchmarks.sensitivity_check"
    )
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--bits", type=int, nargs="+", default=[2])
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    calib, test = fashion_mnist_data("fashion_mnist", args.root, args.num_samples, 0)
    model, _ = float_and_quantized(build_model(args.arch, args.checkpoint, None), calib[:2])
    trace = trace_network(model, calib[:2])
    layers = {info.name: model.get_submodule(info.name) for info in trace.layers}
    start = time.perf_counter()
    predicted = layer_sensitivity(model, calib, layers, args.bits, QuantConfig())
    seconds = time.perf_counter() - start
    fp32, measured = _one_layer_drops(model, layers, args.bits, test)
    for b in args.bits:
        names = [n for n in layers if n in predicted]
        drops = [measured[n][b]["drop"] for n in names]
        fisher = spearman([predicted[n][b] for n in names], drops)
        naive = spearman([measured[n][b]["weight_error"] for n in names], drops)
        log.info(
            "%s W%d, %d layers: Spearman(predicted, drop) %.3f; naive weight error %.3f; "
            "sensitivity pass %.1f s on %d samples (all bits)",
            args.arch, b, len(names), fisher, naive, seconds, len(calib),
        )  # fmt: skip
    if args.out is not None:
        with args.out.open("a") as handle:
            for name in layers:
                for b in args.bits:
                    row = {"arch": args.arch, "layer": name, "bits": b, "fp32_top1": fp32}
                    row |= {"predicted": predicted.get(name, {}).get(b), **measured[name][b]}
                    handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
