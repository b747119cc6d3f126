"""The public verb: :func:`adaround`, for a PyTorch network or an ONNX model.

One verb, two front ends (:mod:`~adaround_lightning.torch_frontend`, block by block on the
module graph; :mod:`~adaround_lightning.onnx_frontend`, layer by layer under onnxruntime), one
result protocol (:class:`~adaround_lightning.engine.records.results.CalibrationResult`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.adaround_config import AdaroundConfig
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.engine.walk_options import WalkOptions
from adaround_lightning.onnx_frontend.onnx_adaround import adaround_graph
from adaround_lightning.onnx_frontend.onnx_result import OnnxAdaroundResult
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.torch_frontend.forward_adapter import ForwardAdapter, ForwardFn
from adaround_lightning.torch_frontend.torch_adaround import CalibrationData, adaround_module
from adaround_lightning.torch_frontend.torch_result import AdaroundResult

__all__ = ["adaround", "adaround_onnx"]


def adaround(
    model: nn.Module | str | Path | Any,
    calibration_data: CalibrationData,
    quant: QuantConfig | None = None,
    config: AdaroundConfig | None = None,
    trainer: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
    checkpoint_tag: str = "",
    loggers: list[Logger] | None = None,
    progress: bool | None = None,
    engine: EngineConfig | None = None,
    forward_fn: ForwardFn | None = None,
) -> AdaroundResult | OnnxAdaroundResult:
    """Quantize a network's Conv/Linear (Gemm/MatMul) weights with AdaRound.

    Args:
        model: A trained ``nn.Module`` (left unchanged; the result holds copies), or a float
            ONNX model: a path to an ``.onnx`` file or an ``onnx.ModelProto``.
        calibration_data: Unlabelled inputs: a tensor ``(N, ...)``, a dataset, a DataLoader or an
            iterable of batches; ``(input, label)`` items are accepted and labels ignored (an
            ONNX model takes a tensor or array ``(N, ...)`` as it reads its input).
        quant: Bits and layer selection (default: 4-bit per-channel everywhere).
        config: AdaRound's optimisation settings (default: the paper's, 10k steps per layer).
        trainer: Keyword arguments of the Lightning ``Trainer`` of each layer's fit, e.g.
            ``{"accelerator": "gpu", "precision": "bf16-mixed"}``. Lightning picks the device.
        checkpoint: A folder that receives a progress checkpoint after every finished layer.
            If it holds one, those layers are restored and calibration continues after them.
        checkpoint_tag: A fingerprint of the settings; a checkpoint with another tag is refused.
        loggers: Lightning loggers shared by every layer's fit (metrics prefixed by layer name).
        progress: Show rich progress bars; None shows them on an interactive terminal outside CI.
        engine: How it runs: the activation cache, pass batching, steps (``EngineConfig()``).
        forward_fn: ``forward_fn(model, x)`` calls a network that takes keywords or more than
            one tensor on a batch ``x``, e.g. ``lambda m, x: m(pixel_values=x, mask=MASK)``.

    Returns:
        An ``nn.Module``: an :class:`AdaroundResult` (the quantized and the BN-folded float
        network, quantizers, per-layer reports); an ONNX model: an :class:`OnnxAdaroundResult`.
        Both write the CLI's files with ``result.save(folder, example_input)``.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18(num_classes=10).eval()
        >>> images = torch.randn(64, 3, 32, 32)
        >>> result = adaround(net, images, QuantConfig(weight_bits=4),
        ...                   AdaroundConfig(iters=20, batch_size=16), {"accelerator": "cpu"})
        >>> len(result.layers)
        21
    """
    quant, config = quant or QuantConfig(), config or AdaroundConfig()
    run = (checkpoint, checkpoint_tag, loggers, progress, engine or EngineConfig())
    options = WalkOptions(dict(trainer or {}), *run)
    if isinstance(model, nn.Module):
        model = ForwardAdapter(model, forward_fn) if forward_fn is not None else model
        return adaround_module(model, calibration_data, quant, config, options)
    if forward_fn is not None:
        raise UserError("forward_fn applies to a PyTorch network; an ONNX model reads one input")
    return adaround_graph(model, calibration_data, quant, config, options)


def adaround_onnx(model: str | Path | Any, images: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """:func:`adaround` for a float ONNX model (a path or an ``onnx.ModelProto``).

    Example:
        >>> # result = adaround_onnx("model.onnx", images, QuantConfig(weight_bits=4))
    """
    if isinstance(model, nn.Module):
        raise UserError("adaround_onnx takes an ONNX model (a path or ModelProto): use adaround")
    return adaround(model, images, *args, **kwargs)
