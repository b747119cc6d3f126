"""AdaRound post-training weight quantization on PyTorch Lightning.

Example:
    >>> import torch, torchvision
    >>> from adaround_lightning import adaround, AdaroundConfig, QuantConfig
    >>> net = torchvision.models.mobilenet_v2(num_classes=10).eval()
    >>> result = adaround(net, torch.randn(64, 3, 32, 32), QuantConfig(weight_bits=4),
    ...                   AdaroundConfig(iters=10, batch_size=16), {"accelerator": "cpu"})
    >>> quantized = result.model
"""

from adaround_lightning.config import AdaroundConfig, QuantConfig
from adaround_lightning.driver import AdaroundResult, LayerReport, adaround
from adaround_lightning.loss import AdaptiveRoundingLoss
from adaround_lightning.quantizer import AdaroundFakeQuantizer

__all__ = [
    "AdaptiveRoundingLoss",
    "AdaroundConfig",
    "AdaroundFakeQuantizer",
    "AdaroundResult",
    "LayerReport",
    "QuantConfig",
    "adaround",
]
__version__ = "0.1.0"
