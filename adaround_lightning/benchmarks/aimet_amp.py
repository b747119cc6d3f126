r"""AIMET's automatic mixed precision (AMP) at our budgets: the bits it picks, in its time.

Not part of the project's dependencies: run it with a Python that has ``aimet-torch``. For one
Fashion-MNIST checkpoint (BN folded by AIMET), ``choose_mixed_precision`` with the weight
candidates ``--candidate-bits`` (activations at 16 bits, AIMET's near-float setting), phase 1
and 2 evaluated on ``--eval-size`` labelled *train* images (AMP needs labels; ours does not),
the brute-force search over its sensitivity list, ``allowed_accuracy_drop=None`` (the whole
Pareto front). For each ``--average-bits`` budget the front is replayed until the mean bits
over the weight elements first fit the budget; the row records the bits per layer, AIMET's
round-to-nearest QuantSim top-1 at those bits on the 10k test images, and the seconds of AMP
(shared by the budgets). ``ours.py --layer-bits-from`` then fits AdaRound at exactly those
bits, so the allocation is compared with the same rounding.

Example:
    AIMET_VENV/bin/python -m adaround_lightning.benchmarks.aimet_amp --arch resnet18 \
        --checkpoint CKPT/model.pt --average-bits 2.5 3 --out resnet18_amp.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from adaround_lightning.benchmarks.aimet_adaround import (
    INPUT_SHAPE,
    _write_config,
    aimet_fold_batch_norms,
    quiet_aimet,
    top1,
)
from adaround_lightning.benchmarks.common import (
    ARCHS,
    FASHION_MNIST_PREPROCESS,
    build_model,
    fashion_mnist_data,
)

__all__ = ["main"]

log = logging.getLogger(__name__)


def _labelled_train(root: str, size: int) -> Any:
    from adaround_lightning.data.sources import (
        CalibrationConfig,
        DataConfig,
        evaluation_dataset,
    )
    from adaround_lightning.data.transforms import PreprocessConfig

    config = DataConfig(
        source="fashion_mnist",
        root=root,
        calibration=CalibrationConfig(size=size, seed=1, split="train"),
        eval_split="train",
        eval_size=size,
        preprocess=PreprocessConfig(**FASHION_MNIST_PREPROCESS),  # type: ignore[arg-type]
    )
    return evaluation_dataset(config)


def _weight_layers(model: nn.Module) -> dict[str, int]:
    return {
        name: module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    }


def _replay(pareto: list[Any], layers: dict[str, int], top: int, budget: float) -> dict:
    """The first state of AMP's front whose mean weight bits fit ``budget`` (else its last).

    A layer whose weight is in none of AMP's quantizer groups keeps the top bits: AMP never
    changes it.
    """
    bits = dict.fromkeys(layers, top)
    total = sum(layers.values())
    average = float(top)
    for entry in [None, *pareto]:
        if entry is not None:
            _, _, group, candidate = entry
            for name in group.parameter_quantizers:
                if name in bits:
                    bits[name] = candidate[1][0]
        average = sum(layers[n] * b for n, b in bits.items()) / total
        if average <= budget + 1e-9:
            return {"bits": dict(bits), "average_bits": average, "met_budget": True}
    return {"bits": dict(bits), "average_bits": average, "met_budget": False}


def _grouped(pareto: list[Any]) -> set[str]:
    return {name for _, _, group, _ in pareto for name in group.parameter_quantizers}


def _sim(model: nn.Module, config_file: Path, top: int) -> Any:
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    return QuantizationSimModel(
        model,
        dummy_input=torch.zeros(INPUT_SHAPE),
        quant_scheme=QuantScheme.post_training_tf,
        default_output_bw=16,
        default_param_bw=top,
        config_file=str(config_file),
    )


def _sim_top1(model: nn.Module, config_file: Path, bits: dict, calib: torch.Tensor, test) -> float:
    sim = _sim(model, config_file, 8)
    for name, module in sim.model.named_modules():
        if name in bits and getattr(module, "param_quantizers", None):
            module.param_quantizers["weight"].bitwidth = bits[name]
    sim.compute_encodings(lambda m: [m(b) for b in calib.split(64)])
    return top1(sim.model, test)


def main(argv: list[str] | None = None) -> int:
    """Run AMP once and write one row per budget."""
    parser = argparse.ArgumentParser(prog="python -m adaround_lightning.benchmarks.aimet_amp")
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--average-bits", type=float, nargs="+", default=[2.5, 3.0])
    parser.add_argument("--candidate-bits", type=int, nargs="+", default=[2, 3, 4, 8])
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quiet_aimet()
    from aimet_torch.common.amp.utils import AMPSearchAlgo
    from aimet_torch.common.defs import CallbackFunc, QuantizationDataType
    from aimet_torch.mixed_precision import choose_mixed_precision

    calib, test = fashion_mnist_data("fashion_mnist", args.root, args.num_samples, 0)
    labelled = _labelled_train(args.root, args.eval_size)
    model = aimet_fold_batch_norms(build_model(args.arch, args.checkpoint, None))
    work = Path(tempfile.mkdtemp(prefix="aimet_amp_"))
    config_file = _write_config(work, per_channel=True)
    top = max(args.candidate_bits)
    candidates = [
        ((16, QuantizationDataType.int), (b, QuantizationDataType.int))
        for b in sorted(args.candidate_bits)
    ]
    sim = _sim(model, config_file, top)

    def evaluate(net: nn.Module, *_: Any) -> float:
        return top1(net, labelled) / 100

    def calibrate(net: nn.Module, *_: Any) -> None:
        for batch in DataLoader(calib, batch_size=64):
            net(batch)

    start = time.perf_counter()
    sim.compute_encodings(calibrate)
    pareto = choose_mixed_precision(
        sim, torch.zeros(INPUT_SHAPE), candidates, CallbackFunc(evaluate), CallbackFunc(evaluate),
        None, str(work), True, CallbackFunc(calibrate), amp_search_algo=AMPSearchAlgo.BruteForce,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    layers = _weight_layers(model)
    for budget in args.average_bits:
        state = _replay(pareto or [], layers, top, budget)
        row = {
            "tool": "aimet_amp",
            "arch": args.arch,
            "average_bits": budget,
            "achieved_average_bits": round(state["average_bits"], 4),
            "met_budget": state["met_budget"],
            "chosen_bits": state["bits"],
            "layers_amp_never_changes": sorted(set(layers) - _grouped(pareto or [])),
            "amp_seconds": round(seconds, 1),
            "nearest_top1": _sim_top1(model, config_file, state["bits"], calib, test),
            "eval_size": args.eval_size,
        }
        log.info("AMP at %.2f bits: %s", budget, json.dumps(row))
        if args.out is not None:
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
