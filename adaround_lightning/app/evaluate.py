"""Top-1 / top-5 accuracy with torchmetrics, for PyTorch models and for onnxruntime."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from adaround_lightning.export.onnx import onnx_session
from adaround_lightning.graph.outputs import output_tensors

__all__ = ["Accuracy", "evaluate", "evaluate_with_onnx", "scores"]


def scores(output: object) -> torch.Tensor:
    """The class scores of a model's output: its first tensor (``logits`` of a ModelOutput)."""
    tensors = output_tensors(output)
    if not tensors:
        raise TypeError(f"the model returned {type(output).__name__}, which holds no tensor")
    return tensors[0]


class Accuracy:
    """Top-1 (and top-5 when there are at least 5 classes) accuracy in percent.

    ``sync_on_compute`` is off: under DDP only rank 0 evaluates.

    Example:
        >>> acc = Accuracy(3, torch.device("cpu"))
        >>> acc.update(torch.eye(3), torch.arange(3))
        >>> acc.compute()
        {'top1': 100.0}
    """

    def __init__(self, num_classes: int, device: torch.device) -> None:
        top_ks = (1, 5) if num_classes >= 5 else (1,)
        self.metrics = {
            f"top{k}": MulticlassAccuracy(
                num_classes, top_k=k, average="micro", sync_on_compute=False
            ).to(device)
            for k in top_ks
        }
        self.device = device

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch."""
        for metric in self.metrics.values():
            metric.update(logits.to(self.device), labels.to(self.device))

    def compute(self) -> dict[str, float]:
        """Accuracies in percent."""
        return {name: round(100.0 * float(m.compute()), 4) for name, m in self.metrics.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict[str, float]:
    """Top-1 (and top-5 when there are at least 5 classes) accuracy in percent.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.eye(3), torch.arange(3))
        >>> evaluate(torch.nn.Identity(), data, 3, torch.device("cpu"))
        {'top1': 100.0}
    """
    model = model.eval().to(device)
    accuracy = Accuracy(num_classes, device)
    for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        accuracy.update(scores(model(images.to(device))), labels)
    return accuracy.compute()


@torch.no_grad()
def evaluate_with_onnx(
    onnx_path: Path,
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    device: torch.device,
    batch_size: int = 256,
) -> tuple[dict[str, float], dict[str, float]]:
    """One pass over ``dataset``: PyTorch and onnxruntime accuracy, and their largest logit gap.

    Returns:
        ``(pytorch, onnx)``; ``onnx`` also holds ``max_abs_logit_diff``, ``max_abs_logit``
        (PyTorch's largest logit magnitude, the scale the grid check's bound is relative to) and
        ``top1_agreement`` (percent of images whose predicted class is the same).
    """
    # No graph optimizations: they change a quantized graph's numerics (onnx_session).
    session = onnx_session(Path(onnx_path))
    model = model.eval().to(device)
    torch_accuracy = Accuracy(num_classes, device)
    onnx_accuracy = Accuracy(num_classes, torch.device("cpu"))
    max_diff = largest = 0.0
    agree = count = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        logits = scores(model(images.to(device)))
        onnx_logits = torch.from_numpy(session.run(["logits"], {"input": images.numpy()})[0])
        max_diff = max(max_diff, float((onnx_logits - logits.float().cpu()).abs().max()))
        largest = max(largest, float(logits.abs().max()))
        agree += int((onnx_logits.argmax(1) == logits.float().cpu().argmax(1)).sum())
        count += len(labels)
        torch_accuracy.update(logits, labels)
        onnx_accuracy.update(onnx_logits, labels)
    parity = {
        "max_abs_logit_diff": max_diff,
        "max_abs_logit": largest,
        "top1_agreement": 100.0 * agree / max(1, count),
    }
    return torch_accuracy.compute(), {**onnx_accuracy.compute(), **parity}
