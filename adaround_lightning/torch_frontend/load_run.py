"""Load a finished run dir back as a network: :func:`load_quantized`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.export.integers import load_input_quantizers, load_quantized_weights
from adaround_lightning.export.run_dir import (
    MANIFEST_FILE,
    MODEL_FILE,
    ONNX_FILE,
    ONNX_LAYERS_FILE,
    RESULTS_FILE,
    WEIGHTS_FILE,
)
from adaround_lightning.graph.bn_fold import fold_batch_norms
from adaround_lightning.models.model_builder import ModelConfig, build_model
from adaround_lightning.quant.activations import attach_input_quantizers
from adaround_lightning.torch_frontend.networks import expose_functional_weights

__all__ = ["load_quantized"]


def _input_shape(run_dir: Path) -> list[int]:
    for name in (RESULTS_FILE, MANIFEST_FILE):  # a CLI run's, or result.save()'s
        if (run_dir / name).is_file():  # a failed run's results.json has no input_shape
            shape = json.loads((run_dir / name).read_text()).get("input_shape")
            if shape is not None:
                return shape
    raise UserError(
        f"{run_dir} has neither {RESULTS_FILE} nor {MANIFEST_FILE}: pass a finished run dir, "
        "or a folder written by result.save(folder, example_input)"
    )


def _model_of_run(run_dir: Path) -> nn.Module:
    if not (run_dir / "config.yaml").is_file():
        raise UserError(
            f"{run_dir} has no config.yaml to rebuild the network from: pass the float network, "
            "load_quantized(run_dir, model)"
        )
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    assert isinstance(config, dict)
    model_cfg = dict(config["model"])
    model_cfg.update(weights=None, checkpoint=None)
    return build_model(ModelConfig(**model_cfg))


def load_quantized(run_dir: Path | str, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a calibrated network from the files of a run (CLI) or of ``result.save``.

    Builds the architecture from ``config.yaml`` (or takes ``model``, the float network, which
    is copied, not changed), exposes its functional weights as the calibration did
    (``nn.MultiheadAttention`` with separate projections), folds BatchNorm (the saved network
    is BN-folded), loads ``quantized_model.pt`` and writes ``s * q`` from
    ``quantized_weights.safetensors`` into the quantized layers.

    Raises:
        UserError: If ``run_dir`` is an ONNX-path run or lacks the files.

    Example:
        >>> model = load_quantized("outputs/quickstart/2026-01-01_00-00-00")  # doctest: +SKIP
        >>> result.save("run", images[:2]); model = load_quantized("run", net)  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if (run_dir / ONNX_LAYERS_FILE).is_file():
        raise UserError(
            f"{run_dir} is a run of the ONNX path (model.onnx): its quantized model is "
            f"{run_dir / ONNX_FILE}; load it with onnxruntime"
        )
    model = _model_of_run(run_dir) if model is None else copy.deepcopy(model).eval()
    example = torch.zeros(2, *_input_shape(run_dir))
    expose_functional_weights(model, example)
    fold_batch_norms(model, example)
    state = torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    with torch.no_grad():
        for layer in load_quantized_weights(run_dir / WEIGHTS_FILE):
            model.get_submodule(layer.name).weight.copy_(layer.dequantized())
    attach_input_quantizers(model, load_input_quantizers(run_dir / WEIGHTS_FILE))
    return model.eval()
