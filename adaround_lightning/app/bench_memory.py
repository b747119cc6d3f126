r"""``python -m adaround_lightning.bench --memory``: what the walk's activation cache costs.

Runs the whole walk (:func:`adaround_lightning.adaround`) on random inputs of the model's real
shape with few steps per layer, so the numbers are about caching, not optimisation, and prints
peak host (and GPU) memory, the cache's peak bytes per tier, the full-network and streamed block
passes, and the caching and walk seconds. Compare ``--set stream=false cache_device=accelerator``
(every block's input from the images, everything on the device) with the defaults.

Example:
    python -m adaround_lightning.bench --memory --model mobilenet_v2 --samples 1024 \
        --set cache_device=disk cache_budget_gb=2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import torch

from adaround_lightning.api import adaround
from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.engine_config import ENGINE_FIELDS, EngineConfig
from adaround_lightning.models.model_builder import (
    ModelConfig,
    build_model,
    quickstart_model_config,
)
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = ["run_memory_benchmark"]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _peak_host_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_memory_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """One walk; returns (and prints) its memory, passes and seconds."""
    overrides = dict(item.split("=", 1) for item in args.set or [])
    settings = {key: _value(value) for key, value in overrides.items()}
    quickstart = args.model == "quickstart"
    model_config = quickstart_model_config() if quickstart else ModelConfig(args.model, 1000)
    resolution = args.resolution or (32 if quickstart else 224)
    model = build_model(model_config)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.samples, 3, resolution, resolution, generator=generator)
    # --set takes AdaroundConfig and EngineConfig fields alike.
    engine = {k: v for k, v in settings.items() if k in ENGINE_FIELDS}
    config = AdaroundConfig(
        iters=args.walk_iters,
        batch_size=min(args.batch, args.samples),
        num_samples=args.samples,
        **{k: v for k, v in settings.items() if k not in ENGINE_FIELDS},
    )
    baseline = _peak_host_gib()
    start = time.perf_counter()
    trainer = {"accelerator": args.accelerator, "devices": 1}
    result = adaround(
        model,
        images,
        QuantConfig(weight_bits=4),
        config,
        trainer,
        progress=False,
        engine=EngineConfig(**engine),
    )
    assert result.cache is not None
    row: dict[str, Any] = {
        "model": args.model,
        "resolution": resolution,
        "samples": args.samples,
        "settings": settings,
        "walk_seconds": round(time.perf_counter() - start, 1),
        "caching_seconds": result.cache.seconds,
        "peak_host_gib": round(_peak_host_gib(), 2),
        "host_gib_before_walk": round(baseline, 2),
        "cache_peak_gib": {k: round(v / 2**30, 3) for k, v in result.cache.peak_bytes.items()},
        "full_network_passes": result.cache.full_network_passes,
        "streamed_block_passes": result.cache.streamed_block_passes,
        "reused_block_outputs": result.cache.reused_block_outputs,
        "restarts": result.cache.restarts,
        "forward_batch_size": result.cache.forward_batch_size,
        "layers": len(result.layers),
    }
    if torch.cuda.is_available():
        row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    sys.stdout.write(json.dumps(row) + "\n")
    return row
