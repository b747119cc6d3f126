"""A Hugging Face checkpoint in the compressed-tensors ``pack-quantized`` format.

What ``transformers`` (with the ``compressed-tensors`` package) and vLLM load as a quantized
model, without this package: the model folder's ``config.json`` gains a
``quantization_config`` (``quant_method: compressed-tensors``, ``format: pack-quantized``) and
``model.safetensors`` holds, for every quantized ``nn.Linear`` called ``NAME``:

* ``NAME.weight_packed``: the integers, int32 words, ``b`` bits per element packed densely
  along the input dimension (32 elements per ``b`` words; compressed-tensors' layout, each
  integer offset by ``2**(b-1)``);
* ``NAME.weight_scale``: ``(C_out, K / G)`` per group, ``(C_out, 1)`` per channel, ``(1,)`` per
  tensor, in the model's float dtype;
* ``NAME.weight_zero_point`` (asymmetric grids only): the integer zero points, packed the same
  way along the output dimension (``zero_points="packed"``, the format's layout). Loading that
  layout fails in ``transformers`` 5 with compressed-tensors 0.20 (it sizes the placeholder
  unpacked, then unpacks it: llm-compressor issues #1618, #1704), so ``zero_points="padded"``
  writes the same words in the first rows of a ``(C_out, K / G)`` tensor, which those load;
* ``NAME.weight_shape``: ``(C_out, K)``.

A runtime dequantizes ``s (q - z)``: exactly the weight the calibrated network holds. Every
other parameter (embeddings, norms, a float ``lm_head``) is stored as it is. One config group
per grid (bits, symmetry, granularity) targets its layers by name, so mixed precision loads too.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = [
    "COMPRESSED_DIR",
    "ZERO_POINT_LAYOUTS",
    "load_compressed_tensors",
    "pack_int32",
    "save_compressed_tensors",
    "unpack_int32",
]

log = logging.getLogger(__name__)

#: The layouts of an asymmetric grid's zero points (:func:`save_compressed_tensors`).
ZERO_POINT_LAYOUTS = ("packed", "padded")
#: The folder a run writes the checkpoint into.
COMPRESSED_DIR = "compressed_tensors"
#: The tokenizer and generation files copied from the source model folder, where present.
_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def pack_int32(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed ``bits``-bit integers ``(R, C)`` densely into int32 words along ``C``.

    Element ``i`` of a row occupies bits ``i*b .. i*b + b - 1`` of the row's bit stream (words
    little-end first), offset by ``2**(b-1)`` to be unsigned: ``ceil(C b / 32)`` words a row.

    Example:
        >>> pack_int32(torch.tensor([[-8, 7]], dtype=torch.int8), 4)
        tensor([[240]], dtype=torch.int32)
    """
    unsigned = values.to(torch.int64) + (1 << (bits - 1))  # (R, C) in [0, 2**b)
    rows, cols = unsigned.shape
    words = math.ceil(cols * bits / 32)
    start = torch.arange(cols, dtype=torch.int64) * bits  # each element's first bit
    out = torch.zeros(rows, words + 1, dtype=torch.int64)
    out.scatter_add_(1, (start // 32).expand(rows, -1), unsigned << (start % 32))
    # An element that straddles two words: its high bits go to the next word.
    spill = unsigned >> (32 - start % 32)
    out.scatter_add_(1, (start // 32 + 1).expand(rows, -1), spill)
    out = out[:, :words] & 0xFFFFFFFF
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Undo :func:`pack_int32`: ``(R, words)`` int32 to ``(R, cols)`` int8.

    Example:
        >>> unpack_int32(torch.tensor([[240]], dtype=torch.int32), 4, 2)
        tensor([[-8,  7]], dtype=torch.int8)
    """
    words = packed.to(torch.int64) & 0xFFFFFFFF
    words = torch.cat([words, torch.zeros_like(words[:, :1])], 1)  # room for a straddle
    start = torch.arange(cols, dtype=torch.int64) * bits
    low, high = words[:, start // 32], words[:, start // 32 + 1]
    both = (low >> (start % 32)) | (high << (32 - start % 32))
    return ((both & ((1 << bits) - 1)) - (1 << (bits - 1))).to(torch.int8)


def _grid_args(quantizer: AdaroundFakeQuantizer) -> dict[str, Any]:
    """The ``weights`` quantization arguments of one layer's grid."""
    if quantizer.group_size is not None:
        strategy, group = "group", quantizer.group_size
    else:
        strategy, group = ("channel" if quantizer.is_per_channel else "tensor"), None
    return {
        "num_bits": quantizer.bits,
        "type": "int",
        "symmetric": quantizer.is_symmetric,
        "strategy": strategy,
        "group_size": group,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
    }


def _layer_tensors(
    name: str, quantizer: AdaroundFakeQuantizer, dtype: torch.dtype, padded: bool
) -> dict[str, torch.Tensor]:
    """The four (or three) stored tensors of one quantized Linear, from its quantizer."""
    q = quantizer.integer_weight().cpu()  # (C_out, K) int8, zero point included
    scale = quantizer.scale.detach().cpu().float()
    zero = quantizer.zero_point.detach().cpu()
    if quantizer.group_size is not None:  # expanded (C_out, K) -> one per group
        scale, zero = (t.reshape(len(q), -1)[:, :: quantizer.group_size] for t in (scale, zero))
    elif quantizer.is_per_channel:
        scale, zero = scale.reshape(-1, 1), zero.reshape(-1, 1)
    else:
        scale, zero = scale.reshape(1), zero.reshape(1)
    tensors = {
        f"{name}.weight_packed": pack_int32(q, quantizer.bits),
        f"{name}.weight_scale": scale.to(dtype).contiguous(),
        f"{name}.weight_shape": torch.tensor(list(q.shape), dtype=torch.int64),
    }
    if not quantizer.is_symmetric:
        zero = zero.to(torch.int8).reshape(len(scale), -1)
        packed = pack_int32(zero.T.contiguous(), quantizer.bits).T  # along C_out
        if padded:  # the words in the first rows of a (C_out, G) tensor (see the module doc)
            packed = torch.cat([packed, packed.new_zeros(len(zero) - len(packed), zero.shape[1])])
        tensors[f"{name}.weight_zero_point"] = packed.contiguous()
    return tensors


def quantization_config(
    quantizers: dict[str, AdaroundFakeQuantizer], ignore: list[str]
) -> dict[str, Any]:
    """``config.json``'s ``quantization_config``: one group per grid, its layers by name."""
    groups: dict[str, dict[str, Any]] = {}
    for name, quantizer in quantizers.items():
        args = _grid_args(quantizer)
        key = json.dumps(args, sort_keys=True)
        group = groups.setdefault(key, {"targets": [], "weights": args})
        group["targets"].append(f"re:^{name.replace('.', '[.]')}$")
    config_groups = {
        f"group_{i}": {
            **group,
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
        for i, group in enumerate(groups.values())
    }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
    }


def save_compressed_tensors(
    float_model: nn.Module,
    quantizers: dict[str, AdaroundFakeQuantizer],
    folder: Path,
    source: Path | None = None,
    zero_points: str = "packed",
) -> Path:
    """Write ``folder`` as a compressed-tensors ``pack-quantized`` Hugging Face checkpoint.

    Args:
        float_model: The float network (a ``transformers`` ``PreTrainedModel``): its config and
            every parameter that is not a quantized weight.
        quantizers: The calibrated weight quantizers, by module name (``nn.Linear``, and an
            ``nn.Embedding`` rounded by ``quant.quantize_embeddings``: stored dequantized).
        folder: The output folder (created).
        source: The model folder it was loaded from: its tokenizer and generation files are
            copied, so the folder is a complete model.
        zero_points: How an asymmetric grid's zero points are laid out: ``packed`` (the
            format's own, ``(ceil(C_out b / 32), K / G)`` int32, what vLLM and llm-compressor
            read) or ``padded`` (the same words in the first rows of a ``(C_out, K / G)``
            tensor, what ``transformers`` 5 with compressed-tensors 0.20 loads; see below).

    Returns:
        ``folder``.

    Raises:
        UserError: The model is not a Hugging Face model, or a quantized layer is neither a
            Linear nor an Embedding.

    Example:
        >>> # result = adaround(llama, token_ids, QuantConfig(4, group_size=128))
        >>> # save_compressed_tensors(result.float_model, result.quantizers, Path("out"))
    """
    from safetensors.torch import save_file

    config = _checked_config(float_model, quantizers)
    if zero_points not in ZERO_POINT_LAYOUTS:
        raise UserError(f"zero_points must be one of {ZERO_POINT_LAYOUTS}, got {zero_points!r}")
    folder.mkdir(parents=True, exist_ok=True)
    quantizers, rounded = _packed_and_dequantized(float_model, quantizers)
    tensors = _checkpoint_tensors(float_model, quantizers, zero_points == "padded")
    dtype = next(float_model.parameters()).dtype
    tensors.update({f"{n}.weight": q.hard_weight().to(dtype).cpu() for n, q in rounded.items()})
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    record = config.to_dict()
    record["use_cache"] = True  # calibration switched it off on its copy
    linear = [n for n, m in float_model.named_modules() if isinstance(m, nn.Linear)]
    ignore = [n for n in linear if n not in quantizers]
    record["quantization_config"] = quantization_config(quantizers, ignore)
    (folder / "config.json").write_text(json.dumps(record, indent=2, default=str))
    for file in _SIDE_FILES:
        if source is not None and (Path(source) / file).is_file():
            shutil.copy2(Path(source) / file, folder / file)
    log.info(
        "compressed-tensors checkpoint: %d quantized Linear layers, %d left in float, %s",
        len(quantizers),
        len(ignore),
        folder,
    )
    return folder


def _packed_and_dequantized(
    float_model: nn.Module, quantizers: dict[str, AdaroundFakeQuantizer]
) -> tuple[dict[str, AdaroundFakeQuantizer], dict[str, AdaroundFakeQuantizer]]:
    """The Linear layers, packed, and the rounded embeddings, stored dequantized (logged).

    ``transformers`` 5.25 with compressed-tensors 0.20 cannot load an ``nn.Embedding`` in the
    format (the module has no ``weight`` when it initialises it), so a rounded embedding is
    written as its dequantized float values: the same numbers, at 32 bits.
    """
    modules = dict(float_model.named_modules())
    rounded = {n: q for n, q in quantizers.items() if isinstance(modules[n], nn.Embedding)}
    for name in rounded:
        log.warning(
            "compressed-tensors checkpoint: %s (a rounded embedding) is stored dequantized in "
            "float, since transformers cannot load a quantized nn.Embedding; its integers are "
            "in quantized_weights.safetensors",
            name,
        )
    return {n: q for n, q in quantizers.items() if n not in rounded}, rounded


def _checked_config(float_model: nn.Module, quantizers: dict[str, Any]) -> Any:
    """The model's ``transformers`` config; refuses a model or layers the format cannot hold."""
    config = getattr(float_model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise UserError(
            "export.compressed_tensors needs a Hugging Face transformers model (one with a "
            "config): set export.compressed_tensors=false for this model"
        )
    modules = dict(float_model.named_modules())
    stored = (nn.Linear, nn.Embedding)
    not_linear = [n for n in quantizers if not isinstance(modules.get(n), stored)]
    if not_linear:
        raise UserError(
            f"compressed-tensors stores Linear and Embedding weights only; quantized other "
            f"layers: {', '.join(not_linear[:4])}: set export.compressed_tensors=false"
        )
    converted = [n for n in quantizers if getattr(modules[n], "from_hf_conv1d", False)]
    if converted:
        raise UserError(
            f"{converted[0]} is a transformers Conv1D (GPT-2 style), which compressed-tensors "
            "does not quantize: set export.compressed_tensors=false for this model"
        )
    return config


def _checkpoint_tensors(
    float_model: nn.Module, quantizers: dict[str, AdaroundFakeQuantizer], padded: bool
) -> dict[str, torch.Tensor]:
    """Every float parameter but the quantized weights, and each quantized layer's tensors."""
    dtype = next(float_model.parameters()).dtype
    tensors = {
        k: v.detach().cpu().contiguous()
        for k, v in float_model.state_dict().items()
        if k.rsplit(".", 1)[0] not in quantizers or not k.endswith(".weight")
    }
    for name, quantizer in quantizers.items():
        tensors.update(_layer_tensors(name, quantizer, dtype, padded))
    _drop_tied_copies(float_model, tensors)
    return tensors


def load_compressed_tensors(folder: Path) -> nn.Module:
    """The checkpoint as ``transformers`` loads it (``AutoModelForCausalLM``), in eval mode.

    Needs the ``compressed-tensors`` package, as any ``transformers`` user does.
    """
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _drop_tied_copies(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Store a weight tied to another once (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        key = id(parameter)
        if key in seen and name in tensors:
            del tensors[name]
        seen.setdefault(key, name)
