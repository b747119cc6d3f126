"""What a run's integers depend on besides its settings: threads, device and software versions."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

__all__ = ["environment_record"]

#: Distributions whose versions decide the numerics (kernels, model definitions, runtimes).
_PACKAGES = ("adaround_lightning", "torch", "torchvision", "lightning", "onnxruntime", "timm")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment_record(device: torch.device | str) -> dict[str, Any]:
    """Threads, device and versions, as ``results.json`` records them.

    Example:
        >>> record = environment_record("cpu")
        >>> record["device"], record["threads"] == torch.get_num_threads()
        ('cpu', True)
    """
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    versions = {package: _version(package) for package in _PACKAGES}
    return {
        "device": str(device),
        "device_name": name or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {package: v for package, v in versions.items() if v is not None},
    }
