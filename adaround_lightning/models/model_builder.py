"""Build the network to quantize (torchvision, timm, Hugging Face, any class), its checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from adaround_lightning.core.errors import UserError
from adaround_lightning.data.assets import resolve_path
from adaround_lightning.models.zoo_sources import (
    ModelSource,
    build_hf,
    build_hf_causal_lm,
    build_target,
    build_timm,
    timm_known,
)

__all__ = [
    "QUICKSTART_ARCH",
    "ModelConfig",
    "build_model",
    "load_checkpoint",
    "quickstart_model_config",
]

log = logging.getLogger(__name__)

#: Architecture of the quickstart network: ``torchvision.models.<name>(**kwargs)``.
#: The stem conv has stride 2 (32 -> 16); the stages below stride to 8, 4 and 2 pixels.
#: Rows of ``inverted_residual_setting`` are ``[expand_ratio t, channels c, repeats n, stride s]``.
QUICKSTART_ARCH: dict = {
    "name": "mobilenet_v2",
    "kwargs": {
        "num_classes": 10,
        "width_mult": 0.5,
        "inverted_residual_setting": [
            [1, 16, 1, 1],
            [6, 24, 2, 2],
            [6, 32, 2, 2],
            [6, 64, 2, 1],
            [6, 96, 1, 2],
            [6, 160, 1, 1],
        ],
        "dropout": 0.1,
    },
}


def quickstart_model_config() -> ModelConfig:
    """The embedded quickstart network (:data:`QUICKSTART_ARCH`) with its shipped weights.

    Example:
        >>> quickstart_model_config().kwargs["width_mult"]
        0.5
    """
    kwargs = dict(QUICKSTART_ARCH["kwargs"])
    num_classes = kwargs.pop("num_classes")
    return ModelConfig(
        name=QUICKSTART_ARCH["name"],
        num_classes=num_classes,
        kwargs=kwargs,
        checkpoint="embedded://quickstart/model.pt",
    )


#: What a model does (``model.task``): how it is fed and evaluated.
TASKS = ("classification", "causal_lm")


@dataclass
class ModelConfig:
    """Which network to quantize.

    Attributes:
        name: With ``source=torchvision``: a classification model name
            (``torchvision.models.list_models``) or a model class (``VisionTransformer``, ...)
            whose constructor arguments are ``kwargs``. With ``timm``: a ``timm.list_models()``
            name. With ``hf``: a folder written by ``save_pretrained`` or a hub id. With
            ``target``: the dotted path of an ``nn.Module`` class or factory.
        num_classes: Output classes.
        weights: torchvision weights to load (``"DEFAULT"``, ``"IMAGENET1K_V2"``, ...), fetched
            through torchvision's own cache; with ``timm``, any value loads timm's pretrained
            weights; None for none (then give ``checkpoint``). Unused by ``hf`` (the folder or
            hub id holds them) and ``target``.
        checkpoint: A ``state_dict`` file (``.pt``, ``.pth``, ``.safetensors``) or a
            Lightning ``.ckpt``, loaded after ``weights``.
        kwargs: Extra keyword arguments of the builder (e.g. ``width_mult``).
        source: ``torchvision`` (default), ``timm``, ``hf`` or ``target`` (:class:`ModelSource`).
        onnx: A float ONNX classifier to quantize instead (the ONNX path); ``name`` is then
            only its label and the torchvision settings are not used.
        task: ``classification`` (default) or ``causal_lm``: with ``source=hf``, a
            ``transformers`` causal language model (``AutoModelForCausalLM``), calibrated on
            token ids and evaluated by perplexity (``recipe=causal_lm``).
    """

    name: str = "mobilenet_v2"
    num_classes: int = 1000
    weights: str | None = None
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    onnx: str | None = None
    source: ModelSource = ModelSource.TORCHVISION
    task: str = "classification"

    def __post_init__(self) -> None:
        self.source = ModelSource.parse(self.source, "model.source")
        if self.task not in TASKS:
            raise UserError(f"model.task={self.task!r} is unknown; use one of {', '.join(TASKS)}")
        if self.task == "causal_lm" and self.source != ModelSource.HF:
            raise UserError("model.task=causal_lm needs model.source=hf (a transformers model)")
        if self.onnx is not None and not Path(self.onnx).is_file():
            raise UserError(
                f"model.onnx={self.onnx}: no such file; pass the path of a float .onnx model"
            )
        if self.source == ModelSource.TIMM and self.onnx is None and not timm_known(self.name):
            raise UserError(
                f"model.name={self.name!r} is not a timm model; choose one of timm.list_models()"
            )
        available = torchvision.models.list_models(module=torchvision.models)
        known = self.name in available or _model_class(self.name) is not None
        torchvision_source = self.source == ModelSource.TORCHVISION
        if self.onnx is None and torchvision_source and not known:
            raise UserError(
                f"model.name={self.name!r} is not a torchvision classification model; "
                f"choose one of torchvision.models.list_models(), e.g. resnet18, mobilenet_v2, "
                "or a torchvision model class such as VisionTransformer"
            )
        if (
            self.onnx is None
            and torchvision_source
            and _model_class(self.name) is not None
            and self.weights is not None
        ):
            raise UserError(
                f"model.name={self.name} is a class, built from model.kwargs: it has no "
                "torchvision weights; set model.weights=null and model.checkpoint=PATH"
            )
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise UserError(
                f"model.num_classes must be a positive integer, got {self.num_classes!r}"
            )
        self.kwargs = dict(self.kwargs)


def _strip_prefix(state: dict[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """Drop a common key prefix (``model.``, ``net.``, ``module.``) that a wrapper added."""
    if set(state) & model_keys:
        return state
    for key in state:
        for i, char in enumerate(key):
            if char == ".":
                prefix = key[: i + 1]
                stripped = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                if set(stripped) & model_keys:
                    return stripped
        break
    return state


def _read_state(file: Path) -> Any:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a ``state_dict`` (``.pt``, ``.pth``, ``.safetensors``) or a Lightning ``.ckpt``.

    Strictly: every key and shape must fit.

    Raises:
        UserError: If the file is missing or unreadable, or its keys or shapes do not fit.

    Example:
        >>> net = torch.nn.Linear(2, 2)
        >>> torch.save(net.state_dict(), "/tmp/_lin.pt")
        >>> load_checkpoint(torch.nn.Linear(2, 2), "/tmp/_lin.pt")
    """
    file = resolve_path(path)
    if not file.is_file():
        raise UserError(
            f"model.checkpoint={path} does not exist: pass the path of a state_dict file"
        )
    try:
        state = _read_state(file)
    except Exception as error:
        raise UserError(
            f"model.checkpoint={path} is not a readable torch checkpoint ({type(error).__name__}); "
            "pass a file written by torch.save(model.state_dict()), safetensors' save_file or a "
            "Lightning .ckpt"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning checkpoint
    if not isinstance(state, dict):
        raise UserError(f"model.checkpoint={path} holds no state_dict")
    model_state = model.state_dict()
    state = _strip_prefix(state, set(model_state))
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})")
        raise UserError(
            f"model.checkpoint={path} does not fit model.name={type(model).__name__}: "
            f"{'; '.join(details)}; check model.name, model.num_classes and model.kwargs"
        )
    model.load_state_dict(state)


def _model_class(name: str) -> type[nn.Module] | None:
    """``torchvision.models.<name>`` when it is a model class (``VisionTransformer``), else None."""
    candidate = getattr(torchvision.models, name, None)
    if isinstance(candidate, type) and issubclass(candidate, nn.Module):
        return candidate
    return None


def _build_untrained(config: ModelConfig, kwargs: dict[str, Any]) -> nn.Module:
    model_class = _model_class(config.name)
    try:
        if model_class is not None:
            return model_class(num_classes=config.num_classes, **kwargs)
        return torchvision.models.get_model(config.name, num_classes=config.num_classes, **kwargs)
    except TypeError as error:
        raise UserError(
            f"model.kwargs do not fit {config.name} ({error}); "
            "set model.kwargs={} or the builder's own arguments"
        ) from None


def _build_torchvision(config: ModelConfig, kwargs: dict[str, Any]) -> nn.Module:
    weights = config.weights
    if weights is not None:
        try:
            weights_enum = torchvision.models.get_model_weights(config.name)
            weight = weights_enum[weights] if weights != "DEFAULT" else weights_enum.DEFAULT
        except (KeyError, ValueError):
            raise UserError(
                f"model.weights={weights!r} is not a weight of {config.name}; use DEFAULT, null or "
                "one of torchvision.models.get_model_weights(name)"
            ) from None
        categories = len(weight.meta.get("categories", [])) or config.num_classes
        if categories != config.num_classes:
            raise UserError(
                f"model.weights={weights} has {categories} classes but model.num_classes="
                f"{config.num_classes}: set model.weights=null and model.checkpoint=PATH"
            )
        try:
            model = torchvision.models.get_model(config.name, weights=weight, **kwargs)
        except OSError as error:  # includes URLError: no network
            raise UserError(
                f"could not fetch the torchvision weights {weight} ({type(error).__name__}); "
                "offline, download them elsewhere and pass model.checkpoint=PATH "
                "(and model.weights=null)"
            ) from None
    else:
        model = _build_untrained(config, kwargs)
    return model


def build_model(config: ModelConfig) -> nn.Module:
    """Build the network of ``config`` in eval mode, with its weights and checkpoint.

    Example:
        >>> build_model(ModelConfig(name="resnet18", num_classes=10)).fc.out_features
        10
        >>> vit = build_model(ModelConfig("VisionTransformer", 10, kwargs={"image_size": 32,
        ...     "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}))
        >>> vit.heads.head.out_features
        10
    """
    kwargs, source = dict(config.kwargs), config.source
    if source == ModelSource.TIMM:
        model = build_timm(config.name, config.num_classes, config.weights is not None, kwargs)
    elif source == ModelSource.HF and config.task == "causal_lm":
        model = build_hf_causal_lm(config.name, kwargs)
    elif source == ModelSource.HF:
        model = build_hf(config.name, config.num_classes, kwargs)
    elif source == ModelSource.TARGET:
        model = build_target(config.name, kwargs)
    else:
        model = _build_torchvision(config, kwargs)
    untrained = source in (ModelSource.TORCHVISION, ModelSource.TIMM) and config.weights is None
    if untrained and config.checkpoint is None:
        log.warning("model.weights and model.checkpoint are both unset: the model is untrained")
    if config.checkpoint is not None:
        load_checkpoint(model, config.checkpoint)
    return model.eval()
