"""A network's output as tensors, whatever its type.

A tensor, a tuple or list, a dict, or a Hugging Face ``ModelOutput`` (an ordered dict whose
unset fields are None).

Example:
    >>> import torch
    >>> [t.shape for t in output_tensors({"logits": torch.zeros(2, 3), "aux": [torch.ones(1)]})]
    [torch.Size([2, 3]), torch.Size([1])]
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["output_tensors"]


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in ``output``, depth first, in order (dict values in insertion order).

    Args:
        output: What a model returned.

    Returns:
        The tensors; ``[]`` if there are none.
    """
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):  # dict, OrderedDict, transformers' ModelOutput
        return [t for value in output.values() for t in output_tensors(value)]
    if isinstance(output, list | tuple):
        return [t for value in output for t in output_tensors(value)]
    return []
