"""Top-1 / top-5 accuracy with torchmetrics."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["evaluate"]


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
    metrics = {
        "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro", sync_on_compute=False).to(
            device
        )
    }
    if num_classes >= 5:
        metrics["top5"] = MulticlassAccuracy(
            num_classes, top_k=5, average="micro", sync_on_compute=False
        ).to(device)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for images, labels in loader:
        logits = model(images.to(device))
        for metric in metrics.values():
            metric.update(logits, labels.to(device))
    return {name: round(100.0 * float(metric.compute()), 4) for name, metric in metrics.items()}
