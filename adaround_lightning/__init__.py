"""AdaRound post-training weight quantization on PyTorch Lightning.

Example:
    >>> import torch, torchvision
    >>> from adaround_lightning import adaround, AdaroundConfig, QuantConfig
    >>> net = torchvision.models.mobilenet_v2(num_classes=10).eval()
    >>> result = adaround(net, torch.randn(64, 3, 32, 32), QuantConfig(weight_bits=4),
    ...                   AdaroundConfig(iters=10, batch_size=16), {"accelerator": "cpu"})
    >>> quantized = result.model
"""

from adaround_lightning.api import adaround, adaround_onnx
from adaround_lightning.core.interrupt import Interrupted
from adaround_lightning.engine.adaround_config import AdaroundConfig, Granularity
from adaround_lightning.engine.engine_config import EngineConfig
from adaround_lightning.engine.records.results import CalibrationResult, LayerReport
from adaround_lightning.onnx_frontend.onnx_result import OnnxAdaroundResult
from adaround_lightning.onnx_frontend.onnx_writer import write_quantized_onnx
from adaround_lightning.quant.grids import ScaleMethod
from adaround_lightning.quant.loss import AdaptiveRoundingLoss, Reconstruction
from adaround_lightning.quant.quant_config import QuantConfig
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer
from adaround_lightning.torch_frontend.load_run import load_quantized
from adaround_lightning.torch_frontend.torch_result import AdaroundResult

__all__ = [
    "AdaptiveRoundingLoss",
    "AdaroundConfig",
    "AdaroundFakeQuantizer",
    "AdaroundResult",
    "CalibrationResult",
    "EngineConfig",
    "Granularity",
    "Interrupted",
    "LayerReport",
    "OnnxAdaroundResult",
    "QuantConfig",
    "Reconstruction",
    "ScaleMethod",
    "adaround",
    "adaround_onnx",
    "load_quantized",
    "write_quantized_onnx",
]
__version__ = "0.1.0"
