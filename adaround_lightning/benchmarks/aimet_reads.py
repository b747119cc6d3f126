"""Check that AIMET's QuantSim reads our encodings with every integer identical (AIMET venv).

Run as::

    python -m adaround_lightning.benchmarks.aimet_reads --run outputs/quickstart/<date>_<time> \
        --arch quickstart

It builds the BN-folded network of a finished run, loads the run's ``quantized_model.pt`` into
it, wraps it in a weights-only ``QuantizationSimModel``, loads ``encodings.json`` (strict, frozen),
and compares, layer by layer, the integers of AIMET's fake-quantized weights,
``round(Q_aimet(W) / s_aimet)``, with ours in ``quantized_weights.safetensors``. It prints one
line: layers, integers, how many are identical, and the largest
``|Q_aimet(W) - s q|`` in grid steps (float32 rounding of the scale; far below 1/2).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from adaround_lightning.benchmarks.aimet_adaround import (
    INPUT_SHAPE,
    _aimet,
    _remove_activation_quantizers,
    _write_config,
    quiet_aimet,
)
from adaround_lightning.benchmarks.train_quickstart import build_quickstart_model
from adaround_lightning.graph.bn_fold import fold_batch_norms

__all__ = ["Agreement", "agreement", "integers_of", "main"]

log = logging.getLogger(__name__)


@dataclass
class Agreement:
    """How AIMET's integers compare with ours, summed over layers.

    Attributes:
        layers: Weights compared.
        integers: Integer weights compared.
        identical: Of those, how many are equal.
        worst_steps: Largest ``|Q_aimet(W) - s q| / s`` over every weight.
    """

    layers: int = 0
    integers: int = 0
    identical: int = 0
    worst_steps: float = 0.0

    def add(self, other: Agreement) -> None:
        """Fold another layer's agreement into this one."""
        self.layers += other.layers
        self.integers += other.integers
        self.identical += other.identical
        self.worst_steps = max(self.worst_steps, other.worst_steps)


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per output channel, or one) shaped to broadcast against ``like``."""
    values = values.double()
    if values.numel() == 1:
        return values.reshape([1] * like.dim())
    return values.reshape([-1] + [1] * (like.dim() - 1))


def integers_of(fake_quantized: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The integers of a symmetric fake-quantized weight: ``round(Q(W) / s)``, int64.

    Example:
        >>> integers_of(torch.tensor([[0.2, -0.4], [0.3, 0.0]]), torch.tensor([0.2, 0.1]))
        tensor([[ 1, -2],
                [ 3,  0]])
    """
    return torch.round(fake_quantized.double() / _per_channel(scale, fake_quantized)).long()


def agreement(
    aimet_fake_quantized: torch.Tensor,
    aimet_scale: torch.Tensor,
    our_integers: torch.Tensor,
    our_scale: torch.Tensor,
) -> Agreement:
    """One layer: AIMET's integers against ours, and the largest weight gap in grid steps.

    Example:
        >>> agreement(torch.tensor([[0.2, -0.4]]), torch.tensor([0.2]),
        ...           torch.tensor([[1, -2]], dtype=torch.int8), torch.tensor([0.2])).identical
        2
    """
    aimet_integers = integers_of(aimet_fake_quantized, aimet_scale)
    ours = our_integers.long().reshape(aimet_integers.shape)
    step = _per_channel(our_scale, aimet_fake_quantized)
    gap = (aimet_fake_quantized.double() - ours.double() * step).abs() / step
    return Agreement(1, ours.numel(), int((aimet_integers == ours).sum()), float(gap.max()))


def _folded_network(arch: str, num_classes: int) -> nn.Module:
    """The run's network with its BatchNorms folded away (the structure of the saved weights)."""
    if arch == "quickstart":
        model = build_quickstart_model()
    else:
        model = getattr(torchvision.models, arch)(num_classes=num_classes)
    model.eval()
    fold_batch_norms(model, torch.randn(2, *INPUT_SHAPE[1:]))
    return model


def check_run(run_dir: Path, arch: str, num_classes: int = 10) -> Agreement:
    """Compare AIMET's reading of a run's encodings with the run's integers."""
    aimet = _aimet()
    model = _folded_network(arch, num_classes)
    model.load_state_dict(torch.load(run_dir / "quantized_model.pt", weights_only=True))
    ours = load_file(str(run_dir / "quantized_weights.safetensors"))
    encodings = json.loads((run_dir / "encodings.json").read_text())["param_encodings"]
    bits = max(entry[0]["bitwidth"] for entry in encodings.values())
    per_channel = any(len(entry) > 1 for entry in encodings.values())
    with tempfile.TemporaryDirectory() as workdir:
        sim = aimet.QuantizationSimModel(  # the benchmark's QuantSim (aimet_adaround)
            model,
            dummy_input=torch.zeros(INPUT_SHAPE),
            quant_scheme=aimet.QuantScheme.post_training_tf,
            default_param_bw=bits,
            default_output_bw=8,
            config_file=str(_write_config(Path(workdir), per_channel)),
        )
    _remove_activation_quantizers(sim)
    sim.load_encodings(
        str(run_dir / "encodings.json"), strict=True, partial=True, requires_grad=False
    )
    total = Agreement()
    with torch.no_grad():
        for name, qmodule in sim.model.named_modules():
            quantizers = getattr(qmodule, "param_quantizers", None)
            quantizer = quantizers["weight"] if quantizers and "weight" in quantizers else None
            if quantizer is None or f"{name}.q" not in ours:
                continue
            fake = quantizer(qmodule.weight)
            total.add(
                agreement(fake, quantizer.get_scale(), ours[f"{name}.q"], ours[f"{name}.scale"])
            )
    return total


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 if any integer differs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run's output dir")
    parser.add_argument("--arch", default="quickstart", help="quickstart or a torchvision name")
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args(argv)
    quiet_aimet()  # AIMET configures logging when imported: configure ours after it
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    result = check_run(args.run, args.arch, args.num_classes)
    log.info(
        "layers %d, integers %d, identical %d, largest |Q_aimet(W) - s q| %.2e grid steps",
        result.layers,
        result.integers,
        result.identical,
        result.worst_steps,
    )
    return 0 if result.identical == result.integers and result.layers else 1


if __name__ == "__main__":
    raise SystemExit(main())
