"""Networks from the zoos besides torchvision: timm, Hugging Face and any importable class.

``model.source`` picks the builder (:class:`ModelSource`); :mod:`.model_builder` dispatches here.
Pretrained weights come through each zoo's own download and cache (users have internet); tests
build from configs and local folders only.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from torch import nn

from adaround_lightning.core.choices import Choice
from adaround_lightning.core.errors import UserError

__all__ = [
    "ModelSource",
    "build_hf",
    "build_hf_causal_lm",
    "build_target",
    "build_timm",
    "timm_known",
]

log = logging.getLogger(__name__)


class ModelSource(Choice):
    """Where ``model.name`` comes from (``model.source``)."""

    #: ``torchvision.models`` (a builder name or a model class).
    TORCHVISION = "torchvision"
    #: ``timm.create_model(name)``.
    TIMM = "timm"
    #: Hugging Face ``transformers``: a local folder or a hub id, ``from_pretrained``.
    HF = "hf"
    #: Any ``nn.Module`` class or factory by its dotted path, called with ``model.kwargs``.
    TARGET = "target"


def _import(package: str, extra: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UserError(
            f"model.source={extra} needs the {package} package: pip install "
            f"'adaround-lightning[zoo]' (or pip install {package})"
        ) from None


def timm_known(name: str) -> bool:
    """Whether timm (if installed) has an architecture called ``name``."""
    timm = _import("timm", "timm")
    return bool(timm.is_model(name))


def build_timm(name: str, num_classes: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``; its pretrained weights come through timm's own hub cache.

    Example:
        >>> build_timm("resnet18", 10, False, {}).fc.out_features
        10
    """
    timm = _import("timm", "timm")
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except TypeError as error:
        raise UserError(f"model.kwargs do not fit timm's {name} ({error})") from None
    except (OSError, RuntimeError) as error:  # no network, no such pretrained tag
        raise UserError(
            f"could not fetch timm's pretrained {name} ({type(error).__name__}: {error}); "
            "offline, pass model.weights=null and model.checkpoint=PATH"
        ) from None


def build_hf(name: str, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    """A Hugging Face image classifier from a local folder or a hub id (``from_pretrained``).

    Raises:
        UserError: If it cannot be loaded or its label count is not ``num_classes``.
    """
    transformers = _import("transformers", "hf")
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"model.name={name} is not a Hugging Face image classifier this machine can load "
            f"({type(error).__name__}: {first}); pass a folder written by save_pretrained or a "
            "hub id"
        ) from None
    labels = model.config.num_labels
    if labels != num_classes:
        raise UserError(
            f"model.name={name} has {labels} labels but model.num_classes={num_classes}: "
            f"set model.num_classes={labels}"
        )
    return model


def build_hf_causal_lm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """A ``transformers`` causal LM from a local folder or a hub id (``AutoModelForCausalLM``).

    Raises:
        UserError: If it cannot be loaded.
    """
    transformers = _import("transformers", "hf")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"model.name={name} is not a Hugging Face causal language model this machine can "
            f"load ({type(error).__name__}: {first}); pass a folder written by save_pretrained "
            "or a hub id"
        ) from None


def build_target(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``package.module.Class(**kwargs)`` (or a factory function) for any ``nn.Module``.

    Example:
        >>> build_target("torch.nn.Linear", {"in_features": 4, "out_features": 2}).out_features
        2
    """
    module_name, _, attribute = name.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError):
        raise UserError(
            f"model.name={name} is not importable: with model.source=target pass the dotted "
            "path of an nn.Module class or factory on PYTHONPATH (package.module.Class)"
        ) from None
    try:
        model = factory(**kwargs)
    except TypeError as error:
        raise UserError(f"model.kwargs do not fit {name} ({error})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name={name} returned {type(model).__name__}, not an nn.Module")
    return model
