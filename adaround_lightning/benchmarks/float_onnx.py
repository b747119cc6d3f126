r"""Export a benchmark checkpoint to a float ONNX file: the input of the ONNX path.

Example:
    python -m adaround_lightning.benchmarks.float_onnx --arch resnet18 \
        --checkpoint checkpoints/fashion_mnist/resnet18/model.pt --out resnet18.onnx
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from adaround_lightning.benchmarks.common import ARCHS, build_model
from adaround_lightning.export.onnx import export_float_onnx

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Build the checkpoint's network and write it as float ONNX (opset 17, 32 px input)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = build_model(args.arch, args.checkpoint)
    example = torch.randn(2, 3, args.image_size, args.image_size)
    export_float_onnx(model, example, args.out)
    log.info("%s: float ONNX of %s written", args.out, args.arch)


if __name__ == "__main__":
    main()
