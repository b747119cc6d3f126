"""``python -m adaround_lightning.bench``: how fast one AdaRound step is, layer by layer.

For each Conv/Linear layer of a BN-folded network it times the same optimisation step
(soft-quantized weight, layer, activation, two-term loss, backward, Adam) two ways:

* ``lightning``: the project's path,
  :class:`~adaround_lightning.engine.fit.reconstruction.LayerReconstruction` in a fresh
  Lightning ``Trainer`` fed by the calibration cache's on-device batches;
* ``eager``: a plain PyTorch loop of the same step, the floor without Lightning.

It prints ms/step per layer and in total, the projected whole-network calibration time at
``--iters`` steps per layer, and peak host (and GPU) memory. Inputs are random tensors of each
layer's real input shape: the numbers measure speed, not accuracy. Compare ratios within one run;
absolute times only on the GPU you care about.
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from adaround_lightning.app.bench_memory import run_memory_benchmark
from adaround_lightning.engine.cache.activation_cache import RandomBatches
from adaround_lightning.engine.fit.reconstruction import LayerReconstruction
from adaround_lightning.engine.fit.trainer import inner_trainer, process_context, quiet_lightning
from adaround_lightning.graph.bn_fold import fold_batch_norms
from adaround_lightning.graph.capture import capture_input
from adaround_lightning.graph.functional import forward_with_weight, functional_activation
from adaround_lightning.graph.trace import trace_network
from adaround_lightning.models.model_builder import (
    ModelConfig,
    build_model,
    quickstart_model_config,
)
from adaround_lightning.quant.factory import make_quantizer
from adaround_lightning.quant.loss import AdaptiveRoundingLoss
from adaround_lightning.quant.quantizer import rectified_sigmoid

__all__ = ["LayerTiming", "main", "time_layer"]


@dataclass
class LayerTiming:
    """Milliseconds per step of one layer, both ways."""

    name: str
    shape: tuple[int, ...]
    lightning_ms: float
    eager_ms: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_layer(
    layer: nn.Module,
    activation: nn.Module | None,
    inputs: torch.Tensor,
    steps: int,
    batch: int,
    trainer_kwargs: dict,
    steps_per_batch: int = 8,
) -> tuple[float, float]:
    """``(lightning_ms, eager_ms)`` per step for one layer on cached ``inputs``.

    Example:
        >>> cpu = {"accelerator": "cpu"}
        >>> time_layer(nn.Linear(8, 4), None, torch.randn(64, 8), 5, 16, cpu)  # doctest: +SKIP
    """
    device = inputs.device
    activation = functional_activation(activation)
    with torch.no_grad():
        out = forward_with_weight(layer, inputs, layer.weight)
        targets = activation(out) if activation is not None else out
    loss = AdaptiveRoundingLoss(max_iter=steps)

    # Lightning path.
    quantizer = make_quantizer(4, True).to(device)
    quantizer(layer.weight)
    module = LayerReconstruction(
        copy.deepcopy(layer), quantizer, loss, activation, steps_per_batch=steps_per_batch
    )
    batches = RandomBatches(inputs, targets, batch, steps, 0, steps_per_batch)
    _sync(device)
    start = time.perf_counter()
    with quiet_lightning():
        inner_trainer(trainer_kwargs, steps).fit(module, train_dataloaders=batches)
    _sync(device)
    lightning_ms = (time.perf_counter() - start) / steps * 1e3

    # Plain eager loop of the same step.
    quantizer = make_quantizer(4, True).to(device)
    quantizer(layer.weight)
    optimizer = torch.optim.Adam([quantizer.V], lr=1e-3)
    beta, reg_weight = loss.schedule(device=device)
    indices = torch.randint(0, inputs.shape[0], (steps, batch), device=device)
    _sync(device)
    start = time.perf_counter()
    for step in range(steps):
        x, y = inputs[indices[step]], targets[indices[step]]
        h_V = rectified_sigmoid(quantizer.V)
        out = forward_with_weight(layer, x, quantizer.quantize_with(h_V))
        out = activation(out) if activation is not None else out
        total = loss.reconstruction_loss(out, y)
        if step >= loss.warm_start_end:
            total = total + reg_weight[step] * AdaptiveRoundingLoss.regularizer_of_h(
                h_V, beta[step]
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    _sync(device)
    eager_ms = (time.perf_counter() - start) / steps * 1e3
    return lightning_ms, eager_ms


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adaround_lightning.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="quickstart", help="quickstart or a torchvision name")
    parser.add_argument(
        "--resolution", type=int, default=None, help="input side (default 32 / 224)"
    )
    parser.add_argument("--samples", type=int, default=1024, help="cached calibration samples")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per layer")
    parser.add_argument("--iters", type=int, default=10000, help="steps per layer to project to")
    parser.add_argument("--layers", type=int, default=0, help="time only the first N layers")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--steps-per-batch",
        type=int,
        default=8,
        help="optimizer steps per Lightning training step (engine.steps_per_batch)",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="run the whole walk and report its memory, passes and seconds instead",
    )
    parser.add_argument("--walk-iters", type=int, default=2, help="steps per layer of --memory")
    parser.add_argument(
        "--set", nargs="*", metavar="KEY=VALUE", help="adaround settings of --memory"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; return the exit status."""
    args = _parser().parse_args(argv)
    if args.memory:
        run_memory_benchmark(args)
        return 0

    if args.model == "quickstart":
        config = quickstart_model_config()
        resolution = args.resolution or 32
    else:
        config = ModelConfig(name=args.model, num_classes=1000)
        resolution = args.resolution or 224
    trainer_kwargs = {"accelerator": args.accelerator, "devices": 1}
    device = process_context(trainer_kwargs).device
    model = build_model(config).to(device)
    images = torch.randn(args.samples, 3, resolution, resolution, device=device)
    fold_batch_norms(model, images[:2])
    trace = trace_network(model, images[:2])
    layers = trace.layers[: args.layers] if args.layers else trace.layers

    timings: list[LayerTiming] = []
    start = time.perf_counter()
    for info in layers:
        layer = model.get_submodule(info.name)
        activation = model.get_submodule(info.activation) if info.activation else None
        inputs = capture_input(model, layer, images)
        lightning_ms, eager_ms = time_layer(
            layer, activation, inputs, args.steps, args.batch, trainer_kwargs
        )
        timings.append(LayerTiming(info.name, tuple(inputs.shape[1:]), lightning_ms, eager_ms))
        sys.stdout.write(
            f"{info.name:<32} {tuple(inputs.shape[1:])!s:<18} "
            f"lightning {lightning_ms:8.3f} ms/step   eager {eager_ms:8.3f} ms/step   "
            f"ratio {lightning_ms / eager_ms:5.2f}\n"
        )
        sys.stdout.flush()
    wall = time.perf_counter() - start
    mean_l = sum(t.lightning_ms for t in timings) / len(timings)
    mean_e = sum(t.eager_ms for t in timings) / len(timings)
    projected = sum(t.lightning_ms for t in timings) * args.iters / 1e3
    host_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "",
        f"device {device}, model {args.model} at {resolution}x{resolution}, "
        f"{args.samples} samples, batch {args.batch}, {len(timings)} layers, "
        f"{args.steps} timed steps each",
        f"mean ms/step: lightning {mean_l:.3f}, eager {mean_e:.3f} "
        f"(lightning/eager {mean_l / mean_e:.2f})",
        f"projected calibration at {args.iters} steps/layer: {projected:.0f} s "
        "(training steps only)",
        f"benchmark wall time {wall:.1f} s; peak host memory {host_peak:.0f} MiB",
    ]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        lines.append(f"peak GPU memory {peak:.2f} GiB")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
