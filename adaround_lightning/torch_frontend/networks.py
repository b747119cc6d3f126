"""The two networks of a calibration: the BN-folded float reference and its copy to quantize."""

from __future__ import annotations

import copy
import logging
import re

import torch
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.graph.attention import separate_attention_projections
from adaround_lightning.graph.bn_fold import fold_batch_norms
from adaround_lightning.graph.functional_weights import route_functional_weights
from adaround_lightning.graph.hf_conv1d import linear_from_conv1d

__all__ = ["expose_functional_weights", "float_and_quantized"]

log = logging.getLogger(__name__)


def expose_functional_weights(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """Make every weight of ``model`` reach its op through a module call (in place, same function).

    ``nn.MultiheadAttention`` becomes :class:`~adaround_lightning.graph.attention.
    SeparateProjectionAttention` (``q_proj``/``k_proj``/``v_proj``/``out_proj`` modules), and
    ``transformers``' ``Conv1D`` (GPT-2) becomes ``nn.Linear``
    (:func:`~adaround_lightning.graph.hf_conv1d.linear_from_conv1d`), and
    ``F.linear(x, self.qkv.weight, ...)`` calls, as in Swin's attention, run as ``self.qkv(x)``
    (:func:`~adaround_lightning.graph.functional_weights.route_functional_weights`). The
    calibrated network's state dict has these modules' names, so a model that loads it is
    rebuilt and passed through here first.

    Example:
        >>> net = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True).eval()
        >>> sorted(expose_functional_weights(net, torch.ones(1, 3, 8)).state_dict())[8:10]
        ['self_attn.k_proj.bias', 'self_attn.k_proj.weight']
    """
    separate_attention_projections(model)
    linear_from_conv1d(model)
    route_functional_weights(model, example_input)
    return model


def float_and_quantized(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[nn.Module, nn.Module]:
    """Copies of ``model`` on ``example_input``'s device, BatchNorm folded, parameters frozen.

    Weights used functionally are made visible first (:func:`expose_functional_weights`).

    The first is the float reference (``fp``), the second the network being quantized (``q``);
    ``model`` itself is left unchanged.

    Raises:
        UserError: If a parameter holds NaN or Inf, or the model does not run on the input.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> fp, q = float_and_quantized(net, torch.randn(2, 3, 8, 8))
        >>> fp is not q and not any(p.requires_grad for p in q.parameters())
        True
    """
    fp_model = copy.deepcopy(model).eval().to(example_input.device)
    _kv_cache_off(fp_model)
    check_runs_on(fp_model, example_input)
    for name, parameter in fp_model.named_parameters():
        if not torch.isfinite(parameter).all():
            raise UserError(f"parameter {name!r} contains NaN or Inf: fix the checkpoint first")
    expose_functional_weights(fp_model, example_input)
    fold_batch_norms(fp_model, example_input)
    for parameter in fp_model.parameters():
        parameter.requires_grad_(False)
    return fp_model, copy.deepcopy(fp_model)


def _kv_cache_off(model: nn.Module) -> None:
    """Switch a Hugging Face model's KV cache off (on the walk's copy).

    Calibration has no use for one, and a cache object is not a constant the walk can replay
    to a block.
    """
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", False):
        config.use_cache = False
        log.info("%s: KV cache off for calibration (config.use_cache=false)", type(model).__name__)


#: How models say which input size they expect: torchvision ("Expected 224 but got 32"),
#: timm ("doesn't match model (224)").
_EXPECTED_SIZE = (re.compile(r"[Ee]xpected (\d+)"), re.compile(r"model \((\d+)\)"))


def check_runs_on(model: nn.Module, example_input: torch.Tensor) -> None:
    """One forward pass of ``model`` (in eval mode) on ``example_input``, as a clear error.

    Raises:
        UserError: The model refuses the input (most often images of another size), with the
            size it expects where its message gives one and the settings that change it.

    Example:
        >>> check_runs_on(nn.Linear(4, 2), torch.randn(2, 4))
    """
    try:
        with torch.no_grad():
            model(example_input)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError, ValueError, TypeError, IndexError) as error:
        text = str(error).strip()
        first = text.splitlines()[0] if text else type(error).__name__
        size = next((m.group(1) for p in _EXPECTED_SIZE if (m := p.search(first))), None)
        wants = f"it expects {size} px images: " if size else ""
        raise UserError(
            f"the model does not run on inputs of shape {list(example_input.shape)} ({first}); "
            f"{wants}set data.preprocess.resize and data.preprocess.crop to the size it "
            "expects, or change the model's own input size (e.g. model.kwargs.image_size)"
        ) from None
