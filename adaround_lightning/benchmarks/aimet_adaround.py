r"""Qualcomm AIMET's AdaRound on our checkpoints and data: AIMET's half of a side-by-side benchmark.

This module is **not** part of the project's dependencies and is never imported by it. It runs in
a separate virtual environment holding ``aimet-torch==2.42.0`` (pure Python) next to the same
torch/torchvision as the project, plus this package (for its data loading, so the calibration and
test images are bit-identical to the ones our tool sees)::

    python3.11 -m venv /work/aimet-venv
    /work/aimet-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/aimet-venv/bin/pip install aimet-torch==2.42.0
    /work/aimet-venv/bin/pip install -e /work/main

(If pip ever wants to replace torch, install ``aimet-torch`` with ``--no-deps`` and then its
requirements other than torch/torchvision.) AIMET is imported lazily inside functions, so this
module can be imported without it.

Protocol, identical to ours: ``torchvision.models.<arch>(num_classes=10)`` loaded from a float32
state_dict, BatchNorm folded (AIMET's ``fold_all_batch_norms``), then
``Adaround.apply_adaround`` with ``iters`` iterations per layer, ``reg_param=0.01``,
``beta_range=(20, 2)``, ``warm_start=0.2``, ``num_samples // batch_size`` calibration batches of
``batch_size`` images, every Conv/Linear layer (first and last included) at ``bits`` with AIMET's
min-max symmetric weight grid (``QuantScheme.post_training_tf``; ``--quant-scheme tf_enhanced``
for AIMET's own default, the SQNR-optimal range), per channel or per tensor. The
AdaRound encodings are loaded and frozen into a ``QuantizationSimModel`` evaluated with
activation quantizers removed (``A32``, weights only) or 8-bit (``A8``, min-max ranges from the
calibration images). Round-to-nearest with the same QuantSim is reported alongside. One JSON line
per (bits, per_channel, act_bits) is appended to ``--out``.

Example:
    AIMET_VENV/bin/python -m adaround_lightning.benchmarks.aimet_adaround \
        --arch resnet18 --checkpoint checkpoints/fashion_mnist/resnet18/model.pt \
        --bits 4 --per-channel true --act-bits 32 8 --iters 500 --num-samples 512 \
        --batch-size 32 --seed 0 --out results.jsonl
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import random
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adaround_lightning.benchmarks.common import (
    ARCHS,
    FLOAT_ACTS,
    build_model,
    fashion_mnist_data,
    parse_bool,
)

__all__ = [
    "AdaroundSettings",
    "aimet_config",
    "aimet_fold_batch_norms",
    "main",
    "plain_float_model",
    "quantsim_top1",
    "quiet_aimet",
    "run_adaround",
    "run_grid",
    "seed_everything",
    "top1",
]

log = logging.getLogger(__name__)

#: AIMET's example input shape for its graph tracing (BN folding, QuantSim).
INPUT_SHAPE = (1, 3, 32, 32)


@dataclass
class AdaroundSettings:
    """AdaRound hyper-parameters, the same as our tool's defaults.

    Attributes:
        iters: Optimisation iterations per layer.
        batch_size: Images per calibration batch (AIMET also draws 32 rows per step).
        reg_param: Weight of the rounding regulariser (lambda).
        beta_range: Start and end of the annealed beta.
        warm_start: Fraction of the iterations without the rounding regulariser.
        seed: Seed set (torch, numpy, random) before each AdaRound run.
        quant_scheme: AIMET's encoding analysis, ``tf`` (min-max) or ``tf_enhanced`` (AIMET's
            own default: the SQNR-optimal range from a histogram), for the weights of AdaRound
            and round-to-nearest and for the A8 activation ranges.
    """

    iters: int = 500
    batch_size: int = 32
    reg_param: float = 0.01
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    seed: int = 0
    quant_scheme: str = "tf"


def _scheme(aimet: SimpleNamespace, name: str) -> Any:
    """AIMET's ``QuantScheme`` member of ``tf`` or ``tf_enhanced``."""
    return getattr(aimet.QuantScheme, f"post_training_{name}")


def _aimet() -> SimpleNamespace:
    """Import the AIMET pieces used here (lazy: only the AIMET venv has it)."""
    import aimet_torch
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    return SimpleNamespace(
        version=aimet_torch.__version__,
        Adaround=Adaround,
        AdaroundParameters=AdaroundParameters,
        fold_all_batch_norms=fold_all_batch_norms,
        QuantScheme=QuantScheme,
        QuantizationSimModel=QuantizationSimModel,
    )


def quiet_aimet() -> None:
    """Silence AIMET's INFO/WARNING loggers, its per-layer progress bar and known warnings.

    Call it from a script (it changes global logging and warning filters).

    Example:
        >>> quiet_aimet()  # doctest: +SKIP
    """
    # Warnings raised while AIMET traces models / loads encodings: deprecations of torch.jit and
    # of AIMET's own JSON-encodings API (still the only way to import AdaRound's export).
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"aimet_torch(\..*)?")
    import aimet_torch._base.adaround.adaround_weight as adaround_base
    from aimet_torch.common.utils import AimetLogger

    AimetLogger.set_level_for_all_areas(logging.ERROR)
    progress = adaround_base.progress_bar
    if not isinstance(progress, functools.partial):
        adaround_base.progress_bar = functools.partial(progress, disable=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (AIMET draws batches with both ``np`` and ``torch``).

    Example:
        >>> seed_everything(0)
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def aimet_fold_batch_norms(model: nn.Module) -> nn.Module:
    """AIMET's own ``fold_all_batch_norms`` on a copy of ``model`` (32x32 RGB inputs).

    Part of AIMET's workflow under test, so AIMET folds with its own code; our runner folds
    with :func:`adaround_lightning.graph.bn_fold.fold_batch_norms` inside ``adaround``.

    Example:
        >>> folded = aimet_fold_batch_norms(model)  # doctest: +SKIP
    """
    aimet = _aimet()
    folded = copy.deepcopy(model).eval()
    pairs = aimet.fold_all_batch_norms(folded, input_shapes=INPUT_SHAPE)
    log.info("folded %d BatchNorm layers", len(pairs))
    return folded


def aimet_config(per_channel: bool) -> dict[str, Any]:
    """AIMET's ``default_config.json`` with symmetric weights, per channel or per tensor.

    Weights: symmetric, not strict (integer grid ``[-2**(b-1), 2**(b-1) - 1]``); bias not
    quantized; every op output and the model input quantized (used only for ``A8``); AIMET's
    default supergroups (Conv+ReLU, Conv+Clip, Add+ReLU, Gemm+ReLU share one output quantizer).

    Example:
        >>> aimet_config(True)["defaults"]["per_channel_quantization"]
        'True'
    """
    return {
        "defaults": {
            "ops": {"is_output_quantized": "True"},
            "params": {"is_quantized": "True", "is_symmetric": "True"},
            "strict_symmetric": "False",
            "per_channel_quantization": "True" if per_channel else "False",
        },
        "params": {"bias": {"is_quantized": "False"}},
        "op_type": {
            "BatchNormalization": {
                "params": {
                    "running_mean": {"is_quantized": "False"},
                    "running_var": {"is_quantized": "False"},
                }
            },
            "Cast": {"is_output_quantized": "False"},
        },
        "supergroup_pass_list": ["MatmulAdd"],
        "supergroups": [
            {"op_list": ["Conv", "Relu"]},
            {"op_list": ["ConvTranspose", "Relu"]},
            {"op_list": ["Conv", "Clip"]},
            {"op_list": ["Add", "Relu"]},
            {"op_list": ["Gemm", "Relu"]},
        ],
        "model_input": {"is_input_quantized": "True"},
        "model_output": {},
    }


def _write_config(folder: Path, per_channel: bool) -> Path:
    path = folder / f"quantsim_{'per_channel' if per_channel else 'per_tensor'}.json"
    path.write_text(json.dumps(aimet_config(per_channel), indent=2))
    return path


def _forward(model: nn.Module, inputs: Any) -> Any:
    """AIMET ``forward_fn``: the loader yields image tensors (or ``(images, labels)``)."""
    if isinstance(inputs, (list, tuple)):
        inputs = inputs[0]
    return model(inputs)


def _calibration_loader(calib: torch.Tensor, batch_size: int) -> DataLoader:
    """Image-only batches in order, full batches only (``num_samples // batch_size``)."""
    return DataLoader(calib, batch_size=batch_size, shuffle=False, drop_last=True)  # type: ignore[arg-type]


@torch.no_grad()
def top1(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` of ``(image, label)``, in percent (CPU).

    Example:
        >>> top1(model, test)  # doctest: +SKIP
        91.66
    """
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        correct += int((model(images).argmax(dim=1) == labels).sum())
        total += len(labels)
    return round(100.0 * correct / max(total, 1), 2)


def run_adaround(
    model: nn.Module,
    calib: torch.Tensor,
    bits: int,
    config_file: Path,
    settings: AdaroundSettings,
    workdir: Path,
    prefix: str,
) -> tuple[nn.Module, Path, float]:
    """``Adaround.apply_adaround`` on a copy of the BN-folded ``model``.

    Args:
        model: BN-folded float model (left unchanged).
        calib: Calibration images ``(N, 3, H, W)``.
        bits: Weight bits of every Conv/Linear layer.
        config_file: AIMET quantsim config (per channel or per tensor).
        settings: AdaRound hyper-parameters.
        workdir: Folder for AIMET's encodings file.
        prefix: Encodings file name prefix.

    Returns:
        ``(adarounded_model, encodings_path, seconds)``.

    Example:
        >>> ada, enc, secs = run_adaround(folded, calib, 4, cfg, AdaroundSettings(iters=20),
        ...                               Path("/tmp"), "w4")  # doctest: +SKIP
    """
    aimet = _aimet()
    loader = _calibration_loader(calib, settings.batch_size)
    params = aimet.AdaroundParameters(
        data_loader=loader,
        num_batches=len(loader),
        default_num_iterations=settings.iters,
        default_reg_param=settings.reg_param,
        default_beta_range=settings.beta_range,
        default_warm_start=settings.warm_start,
        forward_fn=_forward,
    )
    seed_everything(settings.seed)
    start = time.perf_counter()
    adarounded = aimet.Adaround.apply_adaround(
        copy.deepcopy(model),
        torch.zeros(INPUT_SHAPE),
        params,
        path=str(workdir),
        filename_prefix=prefix,
        default_param_bw=bits,
        default_quant_scheme=_scheme(aimet, settings.quant_scheme),
        default_config_file=str(config_file),
    )
    seconds = time.perf_counter() - start
    return adarounded.eval(), workdir / f"{prefix}.encodings", seconds


@torch.no_grad()
def plain_float_model(adarounded: nn.Module, reference: nn.Module) -> nn.Module:
    """``reference`` with the weights of AIMET's AdaRound result, as plain torch modules.

    AIMET's AdaRound replaces each ``nn.MultiheadAttention`` by its own quantized attention
    (``q_proj``/``k_proj``/``v_proj``/``out_proj`` with quantizers inside), and its
    ``QuantizationSimModel`` refuses a model that already holds quantized modules. The weights are
    packed back into ``reference``'s ``in_proj_weight``; QuantSim then makes the same
    attention again, whose encodings are AdaRound's.

    Example:
        >>> model = plain_float_model(adarounded, folded)  # doctest: +SKIP
    """
    model = copy.deepcopy(reference)
    state = adarounded.state_dict()
    for key, value in model.state_dict().items():
        if key in state and state[key].shape == value.shape:
            value.copy_(state[key])
    for name, module in model.named_modules():
        if not isinstance(module, nn.MultiheadAttention):
            continue
        module.in_proj_weight.copy_(torch.cat([state[f"{name}.{p}_proj.weight"] for p in "qkv"]))
        if module.in_proj_bias is not None:
            module.in_proj_bias.copy_(torch.cat([state[f"{name}.{p}_proj.bias"] for p in "qkv"]))
    return model


def _remove_activation_quantizers(sim: Any) -> None:
    """Weights-only QuantSim: drop every input/output quantizer (as AIMET's AdaRound does)."""
    for qmodule in sim.qmodules():
        qmodule.input_quantizers = nn.ModuleList([None for _ in qmodule.input_quantizers])
        qmodule.output_quantizers = nn.ModuleList([None for _ in qmodule.output_quantizers])


def quantsim_top1(
    model: nn.Module,
    bits: int,
    act_bits: int,
    config_file: Path,
    calib: torch.Tensor,
    test: Dataset,
    batch_size: int,
    encodings: Path | None = None,
    eval_batch_size: int = 256,
    quant_scheme: str = "tf",
) -> float:
    """Top-1 of AIMET's ``QuantizationSimModel`` of ``model``.

    Args:
        model: Float (BN-folded, possibly adarounded) model.
        bits: Weight bits.
        act_bits: Activation bits; ``32`` removes the activation quantizers (weights only).
        config_file: AIMET quantsim config.
        calib: Calibration images for ``compute_encodings``.
        test: Labelled test set.
        batch_size: Calibration batch size.
        encodings: AdaRound parameter encodings, loaded and frozen (None: nearest rounding with
            min-max weight encodings).
        eval_batch_size: Batch size of the evaluation.
        quant_scheme: ``tf`` or ``tf_enhanced`` (:class:`AdaroundSettings`).

    Returns:
        Top-1 in percent.

    Example:
        >>> quantsim_top1(folded, 4, 8, cfg, calib, test, 32)  # doctest: +SKIP
        88.9
    """
    aimet = _aimet()
    dummy = torch.zeros(INPUT_SHAPE)
    sim = aimet.QuantizationSimModel(
        model,
        dummy_input=dummy,
        quant_scheme=_scheme(aimet, quant_scheme),
        default_output_bw=act_bits if act_bits < FLOAT_ACTS else 8,
        default_param_bw=bits,
        config_file=str(config_file),
    )
    if act_bits >= FLOAT_ACTS:
        _remove_activation_quantizers(sim)
    if encodings is not None:
        # The non-deprecated form of sim.set_and_freeze_param_encodings(encodings).
        sim.load_encodings(
            str(encodings), strict=True, partial=True, requires_grad=False, allow_overwrite=False
        )

    def calibrate(qmodel: nn.Module) -> None:
        batches = [dummy] if act_bits >= FLOAT_ACTS else calib.split(batch_size)
        for batch in batches:
            qmodel(batch)

    sim.compute_encodings(calibrate)
    return top1(sim.model, test, eval_batch_size)


def run_grid(
    model: nn.Module,
    calib: torch.Tensor,
    test: Dataset,
    bits_list: Sequence[int],
    per_channel_list: Sequence[bool],
    act_bits_list: Sequence[int],
    settings: AdaroundSettings,
    record: dict[str, Any],
    out: Path | None = None,
    with_nearest: bool = True,
    eval_batch_size: int = 256,
) -> list[dict[str, Any]]:
    """AdaRound once per (bits, per_channel), evaluated at every ``act_bits``.

    Args:
        model: The float model (BatchNorms not folded yet).
        calib: Calibration images.
        test: Labelled test set.
        bits_list: Weight bit widths.
        per_channel_list: Per-channel settings (``True``/``False``).
        act_bits_list: Activation bits (``32``: weights only).
        settings: AdaRound hyper-parameters.
        record: Fields copied into every result (arch, checkpoint, ...).
        out: JSON-lines file each result is appended to as soon as it exists.
        with_nearest: Also evaluate round-to-nearest with the same QuantSim.
        eval_batch_size: Batch size of the evaluations.

    Returns:
        One result dict per (bits, per_channel, act_bits).

    Example:
        >>> rows = run_grid(model, calib, test, [4], [True], [32, 8],
        ...                 AdaroundSettings(iters=20), {"arch": "mobilenet_v2"})  # doctest: +SKIP
    """
    aimet = _aimet()
    folded = aimet_fold_batch_norms(model)
    fp32 = top1(folded, test, eval_batch_size)
    log.info("FP32 (BN folded) top-1: %.2f %%", fp32)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aimet_adaround_") as tmp:
        workdir = Path(tmp)
        for per_channel in per_channel_list:
            config_file = _write_config(workdir, per_channel)
            for bits in bits_list:
                prefix = f"adaround_w{bits}_{'pc' if per_channel else 'pt'}"
                adarounded, encodings, seconds = run_adaround(
                    folded, calib, bits, config_file, settings, workdir, prefix
                )
                log.info("W%d per_channel=%s: AdaRound took %.1f s", bits, per_channel, seconds)
                adarounded = plain_float_model(adarounded, folded)
                for act_bits in act_bits_list:
                    evaluate = functools.partial(
                        quantsim_top1,
                        bits=bits,
                        act_bits=act_bits,
                        config_file=config_file,
                        calib=calib,
                        test=test,
                        batch_size=settings.batch_size,
                        eval_batch_size=eval_batch_size,
                        quant_scheme=settings.quant_scheme,
                    )
                    nearest = evaluate(folded) if with_nearest else None
                    ada = evaluate(adarounded, encodings=encodings)
                    row = {
                        "tool": "aimet",
                        "aimet_version": aimet.version,
                        **record,
                        "bits": bits,
                        "per_channel": per_channel,
                        "act_bits": act_bits,
                        "iters": settings.iters,
                        "num_samples": len(calib),
                        "batch_size": settings.batch_size,
                        "seed": settings.seed,
                        "quant_scheme": settings.quant_scheme,
                        "fp32_top1": fp32,
                        "nearest_top1": nearest,
                        "adaround_top1": ada,
                        "adaround_seconds": round(seconds, 1),
                    }
                    log.info(
                        "W%dA%s %s: fp32 %.2f  nearest %s  adaround %.2f",
                        bits,
                        act_bits,
                        "per-channel" if per_channel else "per-tensor",
                        fp32,
                        "-" if nearest is None else f"{nearest:.2f}",
                        ada,
                    )
                    rows.append(row)
                    if out is not None:
                        with out.open("a") as handle:
                            handle.write(json.dumps(row) + "\n")
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adaround_lightning.benchmarks.aimet_adaround",
        description="AIMET 2.42 AdaRound on our checkpoints and data (run in the AIMET venv).",
    )
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--arch-kwargs", type=json.loads, default=None, help="JSON dict")
    parser.add_argument("--checkpoint", required=True, help="float32 state_dict (torch.save)")
    parser.add_argument("--source", choices=("fashion_mnist", "embedded"), default="fashion_mnist")
    parser.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--bits", type=int, nargs="+", default=[4])
    parser.add_argument("--per-channel", type=parse_bool, nargs="+", default=[True])
    parser.add_argument("--act-bits", type=int, nargs="+", default=[FLOAT_ACTS, 8])
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of each AdaRound run")
    parser.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--no-nearest", action="store_true", help="skip round-to-nearest")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON-lines file appended to")
    parser.add_argument(
        "--quant-scheme",
        choices=("tf", "tf_enhanced"),
        default="tf",
        help="AIMET's encoding analysis (tf_enhanced is AIMET's own default)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status.

    Example:
        >>> main(["--arch", "resnet18", "--checkpoint", "model.pt"])  # doctest: +SKIP
        0
    """
    args = _parser().parse_args(argv)
    quiet_aimet()  # AIMET configures logging when imported: configure ours after it
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.num_samples < args.batch_size:
        raise SystemExit("--num-samples must be at least --batch-size")
    model = build_model(args.arch, args.checkpoint, args.arch_kwargs)
    calib, test = fashion_mnist_data(args.source, args.root, args.num_samples, args.calib_seed)
    log.info("calibration %s, test %d images", tuple(calib.shape), len(test))  # type: ignore[arg-type]
    settings = AdaroundSettings(
        iters=args.iters,
        batch_size=args.batch_size,
        seed=args.seed,
        quant_scheme=args.quant_scheme,
    )
    record = {
        "arch": args.arch,
        "checkpoint": str(args.checkpoint),
        "source": args.source,
        "calib_seed": args.calib_seed,
    }
    run_grid(
        model,
        calib,
        test,
        args.bits,
        args.per_channel,
        args.act_bits,
        settings,
        record,
        out=args.out,
        with_nearest=not args.no_nearest,
        eval_batch_size=args.eval_batch_size,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
