r"""Causal LM weight quantization, side by side: FP32, round-to-nearest, AdaRound, AutoRound.

On the model :mod:`~adaround_lightning.benchmarks.train_causal_lm` trains (its folder holds
``train.txt`` and ``heldout.txt``): calibration windows are drawn from the training text (seeded,
the same for every method), perplexity is measured on every consecutive window of the held-out
text. One method per process, so each row's peak memory is its own::

    python -m adaround_lightning.benchmarks.causal_lm --model DIR --method adaround --bits 4
    python -m adaround_lightning.benchmarks.causal_lm --model DIR --method rtn --bits 3
    AUTOROUND_VENV/bin/python -m adaround_lightning.benchmarks.causal_lm --model DIR \
        --method autoround --bits 4

Each run appends one JSON row to ``--out``: perplexity, seconds of calibration, peak RSS
(``getrusage``), the settings. ``rtn`` is plain round-to-nearest on min/max asymmetric group
grids (what the peers call RTN); ``adaround`` also reports the round-to-nearest of its own grid
(``nearest``) and, with ``--export``, the perplexity of its compressed-tensors checkpoint as
``transformers`` loads it.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["main"]

log = logging.getLogger(__name__)

METHODS = ("fp32", "rtn", "adaround", "autoround")


def _windows(args: argparse.Namespace, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration windows ``(N, L)`` from train.txt and evaluation windows from heldout.txt."""
    from adaround_lightning.data.text import calibration_windows, encode_text, evaluation_windows

    def ids(name: str) -> torch.Tensor:
        text = (args.model / name).read_text(encoding="utf-8", errors="replace")
        return encode_text(tokenizer, text)

    calibration = calibration_windows(ids("train.txt"), args.num_samples, args.seq_len, args.seed)
    evaluation = evaluation_windows(ids("heldout.txt"), args.seq_len, args.eval_windows)
    return calibration, evaluation


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _weight_gib(module: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**30


def _sizes(model: nn.Module) -> dict[str, float]:
    """The model's weights and its largest decoder layer, GiB (the memory bound's terms)."""
    layers = model.get_decoder().layers
    return {
        "weights_gib": round(_weight_gib(model), 4),
        "largest_block_gib": round(max(_weight_gib(layer) for layer in layers), 4),
    }


@torch.no_grad()
def _round_to_nearest(model: nn.Module, bits: int, group_size: int, symmetric: bool) -> None:
    """Min/max grids per group, round to nearest, in place (Linear layers but ``lm_head``)."""
    from adaround_lightning.quant.factory import quantizer_for_weight

    head = model.get_output_embeddings()
    for module in model.modules():
        if isinstance(module, nn.Linear) and module is not head:
            quantizer = quantizer_for_weight(
                module.weight, bits, True, "minmax", group_size, symmetric
            )
            module.weight.copy_(quantizer.nearest_weight().to(module.weight.dtype))


def _adaround(
    model: nn.Module, calibration: torch.Tensor, args: argparse.Namespace
) -> tuple[nn.Module, dict[str, Any]]:
    from adaround_lightning import AdaroundConfig, EngineConfig, QuantConfig, adaround

    quant = QuantConfig(
        weight_bits=args.bits,
        group_size=args.group_size,
        weight_symmetric=args.symmetric,
        scale_method=args.scale_method,
        quantize_embeddings=args.quantize_embeddings,
    )
    config = AdaroundConfig(
        iters=args.iters,
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        lr=args.lr,
        reg_param=args.reg_param,
        straight_through=args.straight_through,
        learn_scale=args.scale_lr > 0,
        scale_lr=args.scale_lr or 1e-3,
    )
    engine = EngineConfig(cache_budget_gb=args.cache_budget_gb)
    if args.cache_budget_gb is not None:
        engine = EngineConfig(cache_budget_gb=args.cache_budget_gb, cache_device="disk")
    checkpoint = args.work / "checkpoints" if args.work else None
    result = adaround(
        model,
        calibration,
        quant,
        config,
        {"accelerator": "cpu"},
        checkpoint,
        engine=engine,
        progress=False,
    )
    return result.model, {"result": result}


def _adaround_extras(
    result: Any, evaluation: torch.Tensor, args: argparse.Namespace
) -> dict[str, float]:
    """Its own grid rounded to nearest, and (``--export``) its checkpoint as transformers loads it.

    Outside the timed calibration: the export is a file write, timed by the CLI's run instead.
    """
    from adaround_lightning.app.perplexity import perplexity
    from adaround_lightning.export.compressed_tensors import (
        load_compressed_tensors,
        save_compressed_tensors,
    )

    extras = {"nearest_perplexity": perplexity(result.nearest_model(), evaluation, "cpu", 8)}
    if args.export is not None:
        save_compressed_tensors(
            result.float_model, result.quantizers, args.export, args.model, "padded"
        )
        loaded = load_compressed_tensors(args.export)
        extras["exported_perplexity"] = perplexity(loaded, evaluation, "cpu", args.batch_size)
    return extras


def _autoround(
    model: nn.Module, tokenizer: Any, calibration: torch.Tensor, args: argparse.Namespace
) -> nn.Module:
    from auto_round import AutoRound

    loader = torch.utils.data.DataLoader(
        [{"input_ids": row} for row in calibration], batch_size=args.batch_size
    )
    rounder = AutoRound(
        model,
        tokenizer,
        bits=args.bits,
        group_size=args.group_size,
        sym=args.symmetric,
        iters=args.iters,
        nsamples=args.num_samples,
        seqlen=args.seq_len,
        batch_size=args.batch_size,
        dataset=loader,
        device_map="cpu",
        amp=False,
        enable_torch_compile=False,
        enable_minmax_tuning=not args.no_minmax_tuning,
    )
    rounder.quantize()
    return rounder.model.float()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--symmetric", action="store_true")
    # AdaRound's settings default to recipes/causal_lm.yaml's (a test keeps them equal).
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.01, help="AdaRound's V learning rate")
    parser.add_argument(
        "--straight-through",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="AdaRound's hard forward with h(V)'s gradient (--no-straight-through: annealed)",
    )
    parser.add_argument(
        "--scale-lr", type=float, default=0.005, help="learned scales' lr (0: fixed grids)"
    )
    parser.add_argument(
        "--quantize-embeddings", action="store_true", help="round the input embedding too"
    )
    parser.add_argument("--reg-param", type=float, default=None, help="AdaRound's lambda")
    parser.add_argument(
        "--no-minmax-tuning", action="store_true", help="AutoRound's scales fixed (a probe)"
    )
    parser.add_argument("--scale-method", default="auto", help="AdaRound's quant.scale_method")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=None)
    parser.add_argument("--cache-budget-gb", type=float, default=None)
    parser.add_argument("--work", type=Path, default=None, help="checkpoints and the disk tier")
    parser.add_argument("--export", type=Path, default=None, help="compressed-tensors folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("causal_lm.jsonl"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one method and append its row to ``--out``; returns the row."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaround_lightning.app.perplexity import perplexity, token_kl

    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    calibration, evaluation = _windows(args, tokenizer)
    sizes = _sizes(model)
    start = time.perf_counter()
    row: dict[str, Any] = {"method": args.method}
    if args.method == "rtn":
        _round_to_nearest(model, args.bits, args.group_size, args.symmetric)
    elif args.method == "adaround":
        model, extra = _adaround(model, calibration, args)
    elif args.method == "autoround":
        model = _autoround(model, tokenizer, calibration, args)
    seconds = time.perf_counter() - start
    peak = _peak_rss_gib()
    row |= {"perplexity": perplexity(model, evaluation, "cpu", args.batch_size)}
    if args.method != "fp32":  # the float model again, from its files: after the peak is read
        reference = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        row["kl_to_fp32"] = token_kl(reference, model, evaluation, "cpu", args.batch_size)
    if args.method == "adaround":
        row |= _adaround_extras(extra["result"], evaluation, args)
    row |= {
        "bits": args.bits,
        "group_size": args.group_size,
        "symmetric": args.symmetric,
        "iters": args.iters,
        "lr": args.lr,
        "reg_param": args.reg_param,
        "scale_lr": args.scale_lr,
        "straight_through": args.straight_through,
        "quantize_embeddings": args.quantize_embeddings,
        "scale_method": args.scale_method,
        "num_samples": args.num_samples,
        "seq_len": args.seq_len,
        "eval_windows": len(evaluation),
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(peak, 3),
        **sizes,
        "threads": args.threads,
        "cache_budget_gb": args.cache_budget_gb,
        "model": str(args.model),
    }
    with args.out.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    log.info("%s", json.dumps(row))
    return row


if __name__ == "__main__":
    main()
