r"""Our half of the side-by-side benchmark: the same grid as the AIMET runner, with our driver.

For one checkpoint, calibrates once per (weight bits, per-channel, granularity) with
:func:`~adaround_lightning.api.adaround` (real Lightning Trainers) and
evaluates FP32,
round-to-nearest and AdaRound top-1 on the full Fashion-MNIST test split, weights only (``A32``)
and with 8-bit activations (``A8``: input quantizers calibrated afterwards on the calibration
images, min-max, AIMET's order; round-to-nearest gets its own calibration). One JSON line per
(bits, per_channel, granularity, act_bits) is appended to ``--out``, in the schema of the AIMET
runner (:mod:`adaround_lightning.benchmarks.aimet_adaround`), so
:mod:`adaround_lightning.benchmarks.table` can put both in one table.

Example:
    python -m adaround_lightning.benchmarks.ours --arch resnet18 \
        --checkpoint checkpoints/fashion_mnist/resnet18/model.pt --bits 4 3 2 \
        --per-channel true false --granularity layer block --iters 500 --out ours.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from adaround_lightning.api import adaround
from adaround_lightning.app.evaluate import evaluate
from adaround_lightning.benchmarks.common import (
    ARCHS,
    FLOAT_ACTS,
    build_model,
    fashion_mnist_data,
    parse_bool,
)
from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.fit.trainer import quiet_lightning
from adaround_lightning.quant.activations import calibrate_input_quantizers
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.torch_frontend.refinement_phase import calibration_divergence
from adaround_lightning.torch_frontend.torch_result import AdaroundResult

__all__ = ["main", "run_grid", "test_divergence"]

log = logging.getLogger(__name__)


def _top1(model: torch.nn.Module, test: Any, batch_size: int) -> float:
    return round(evaluate(model, test, 10, torch.device("cpu"), batch_size)["top1"], 2)


@torch.no_grad()
def test_divergence(
    quantized: torch.nn.Module, float_model: torch.nn.Module, test: Any, batch_size: int
) -> float:
    """``KL(float || quantized)`` of the predictions, mean over the test images.

    A finer measure than top-1 of how far the quantized network is from the float one: top-1
    moves by whole images, and by about 0.1 between seeds at W3 on these checkpoints.
    """
    total, count = 0.0, 0
    for images, _ in DataLoader(test, batch_size=batch_size):
        total += calibration_divergence(quantized, float_model, images, len(images)) * len(images)
        count += len(images)
    return round(total / max(1, count), 6)


def run_grid(
    model: torch.nn.Module,
    calib: torch.Tensor,
    test: Any,
    bits_list: Sequence[int],
    per_channel_list: Sequence[bool],
    granularities: Sequence[str],
    act_bits_list: Sequence[int],
    adaround_config: dict[str, Any],
    record: dict[str, Any],
    out: Path | None = None,
    eval_batch_size: int = 500,
    accelerator: str = "cpu",
    scale_method: str = "auto",
    average_bits_list: Sequence[float] = (),
    given_bits: Sequence[dict[str, Any]] = (),
    quant_fields: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Calibrate once per (bits, per_channel, granularity); evaluate at every ``act_bits``.

    Args:
        model: The float model (BatchNorm not folded; the driver folds it).
        calib: Calibration images ``(N, 3, 32, 32)``.
        test: Labelled test set.
        bits_list: Weight bit widths.
        per_channel_list: Per-channel settings.
        granularities: ``layer`` and/or ``block``.
        act_bits_list: Activation bits (32: float activations).
        adaround_config: Fields of :class:`AdaroundConfig` (iters, batch_size, seed, ...).
        record: Fields copied into every row.
        out: JSON-lines file each row is appended to.
        eval_batch_size: Evaluation batch size.
        accelerator: Lightning accelerator of the fits.
        scale_method: ``quant.scale_method`` of the weight grid.
        average_bits_list: Mixed-precision budgets (``quant.average_bits``), run after the
            uniform ``bits_list``; their rows have ``bits`` null and the chosen bits.
        given_bits: Rows of another tool's allocation (``aimet_amp.py``: ``average_bits``,
            ``chosen_bits``), fitted at exactly those bits (``quant.layer_bits``).
        quant_fields: Other :class:`QuantConfig` fields (e.g. ``weight_symmetric``).

    Returns:
        The rows.

    Example:
        >>> rows = run_grid(model, calib, test, [4], [True], ["layer"], [32, 8],
        ...                 {"iters": 20}, {"arch": "resnet18"})  # doctest: +SKIP
    """
    fp32 = _top1(model, test, eval_batch_size)
    rows: list[dict[str, Any]] = []
    # Round-to-nearest does not depend on the granularity: evaluated once per grid cell.
    nearest_top1: dict[tuple[Any, Any, int, bool, int], float] = {}
    weights = [(b, None, None) for b in bits_list]
    weights += [(None, float(b), None) for b in average_bits_list]
    weights += [(None, None, row) for row in given_bits]
    for per_channel in per_channel_list:
        for bits, average_bits, given in weights:
            for granularity in granularities:
                config = AdaroundConfig(
                    **{**adaround_config, "granularity": granularity, "num_samples": len(calib)}
                )
                start = time.perf_counter()
                with quiet_lightning():
                    L.seed_everything(config.seed, verbose=False)
                result = adaround(
                    model,
                    calib,
                    QuantConfig(
                        weight_bits=bits or math.ceil(average_bits or 8),
                        per_channel=per_channel,
                        scale_method=scale_method,
                        average_bits=average_bits,
                        layer_bits=given["chosen_bits"] if given else {},
                        **(quant_fields or {}),
                    ),
                    config,
                    {"accelerator": accelerator, "devices": 1},
                    progress=False,
                )
                seconds = time.perf_counter() - start
                names = list(result.quantizers)
                for act_bits in act_bits_list:
                    quantized, nearest = result.model, result.nearest_model()
                    if act_bits != FLOAT_ACTS:
                        quantized = copy.deepcopy(quantized)
                        for network in (quantized, nearest):
                            calibrate_input_quantizers(
                                network, names, calib.to(network_device(network)), act_bits
                            )
                    cell = (bits, average_bits, id(given), per_channel, act_bits)
                    if cell not in nearest_top1:
                        nearest_top1[cell] = _top1(nearest, test, eval_batch_size)
                    row = {
                        "tool": "adaround_lightning",
                        **record,
                        "granularity": granularity,
                        "scale_method": scale_method,
                        "bias_correction": config.bias_correction,
                        "bits": bits,
                        "per_channel": per_channel,
                        "act_bits": act_bits,
                        "iters": config.iters,
                        "num_samples": len(calib),
                        "batch_size": config.batch_size,
                        "seed": config.seed,
                        "fp32_top1": fp32,
                        "nearest_top1": nearest_top1[cell],
                        "adaround_top1": _top1(quantized, test, eval_batch_size),
                        "test_divergence": test_divergence(
                            quantized, result.float_model, test, eval_batch_size
                        ),
                        "adaround_seconds": round(seconds, 1),
                        "layers": len(result.layers),
                        "layers_in_blocks": sum(1 for r in result.layers if r.block is not None),
                        "average_bits": given["average_bits"] if given else average_bits,
                        "bits_from": given["tool"] if given else None,
                        **_allocation_fields(result),
                    }
                    log.info(
                        "W%sA%d %s %s: fp32 %.2f nearest %.2f adaround %.2f (%.0f s)",
                        bits or f"{row['average_bits']:g} average",
                        act_bits,
                        "per-channel" if per_channel else "per-tensor",
                        granularity,
                        fp32,
                        row["nearest_top1"],
                        row["adaround_top1"],
                        seconds,
                    )
                    rows.append(row)
                    if out is not None:
                        with out.open("a") as handle:
                            handle.write(json.dumps(row) + "\n")
    return rows


def _given_bits(path: Path | None, arch: str) -> list[dict[str, Any]]:
    if path is None:
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if row.get("arch") == arch]


def _allocation_fields(result: AdaroundResult) -> dict[str, Any]:
    footprint = result.footprint or {}
    fields = {
        "achieved_average_bits": round(footprint.get("average_bits", 0.0), 4),
        "size_bytes": footprint.get("size_bytes"),
        "chosen_bits": {name: q.bits for name, q in result.quantizers.items()},
    }
    allocation = result.bit_allocation
    if allocation is not None:
        fields["uniform_size_bytes"] = allocation.uniform_size_bytes
        fields["allocation_seconds"] = round(allocation.seconds, 2)
    refinement = result.refinement
    fields["refinement"] = None
    if refinement is not None:
        fields["refinement"] = {
            "steps_run": refinement.steps_run,
            "flips": refinement.flips,
            "divergence_before": refinement.divergence_before,
            "divergence_after": refinement.divergence_after,
            "seconds": round(refinement.seconds, 1),
        }
    return fields


def network_device(model: torch.nn.Module) -> torch.device:
    """Device of the first parameter of ``model``."""
    return next(model.parameters()).device


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--arch-kwargs", type=json.loads, default=None, help="JSON dict")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--source", choices=("fashion_mnist", "embedded"), default="fashion_mnist")
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--bits", type=int, nargs="*", default=[4])
    parser.add_argument(
        "--average-bits", type=float, nargs="*", default=[], help="mixed-precision budgets"
    )
    parser.add_argument(
        "--bits-from", type=Path, default=None, help="aimet_amp.py rows: fit at their bits"
    )
    parser.add_argument("--per-channel", type=parse_bool, nargs="+", default=[True])
    parser.add_argument("--granularity", nargs="+", default=["layer"])
    parser.add_argument("--act-bits", type=int, nargs="+", default=[FLOAT_ACTS, 8])
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-seed", type=int, default=0)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="other AdaroundConfig fields"
    )
    parser.add_argument(
        "--quant", nargs="*", default=[], metavar="KEY=VALUE", help="other QuantConfig fields"
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--scale-method", default="auto", help="quant.scale_method")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("adaround_lightning.torch_frontend.torch_walk").setLevel(logging.WARNING)
    model = build_model(args.arch, args.checkpoint, args.arch_kwargs)
    calib, test = fashion_mnist_data(args.source, args.root, args.num_samples, args.calib_seed)
    extra = dict(item.split("=", 1) for item in args.set)
    quant_extra = dict(item.split("=", 1) for item in args.quant)
    config = {
        "iters": args.iters,
        "batch_size": args.batch_size,
        "seed": args.seed,
        **{key: _value(value) for key, value in extra.items()},
    }
    record = {
        "arch": args.arch,
        "checkpoint": str(args.checkpoint),
        "source": args.source,
        "calib_seed": args.calib_seed,
        "settings": extra,
        **({"quant_settings": quant_extra} if quant_extra else {}),
    }
    run_grid(
        model,
        calib,
        test,
        args.bits,
        args.per_channel,
        args.granularity,
        args.act_bits,
        config,
        record,
        args.out,
        accelerator=args.accelerator,
        scale_method=args.scale_method,
        average_bits_list=args.average_bits,
        given_bits=_given_bits(args.bits_from, args.arch),
        quant_fields={key: _value(value) for key, value in quant_extra.items()},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
