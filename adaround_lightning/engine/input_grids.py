"""Activation grids: each quantized layer's input quantizer, observed, then calibrated.

The front end decides what each layer's input is (PyTorch hooks on the quantized network, or
onnxruntime runs of the quantized graph); creating the grids and calibrating them is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from adaround_lightning.core.distributed import ProcessContext
from adaround_lightning.core.errors import UserError
from adaround_lightning.quant.activations import ActivationQuantizer
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = ["InputObserver", "calibrate_input_grids"]

#: Feeds every grid the inputs of its layer (``grid.observe(x)`` per chunk of rows).
InputObserver = Callable[[dict[str, ActivationQuantizer]], None]


def calibrate_input_grids(
    names: Sequence[str],
    quant: QuantConfig,
    observe: InputObserver,
    process: ProcessContext,
    device: torch.device | None = None,
) -> dict[str, ActivationQuantizer]:
    """``quant.act_bits``-bit input grids of ``names``, ranges from ``quant.act_observer``.

    Args:
        names: The layers whose inputs are quantized.
        quant: ``act_bits``, ``act_symmetric`` and ``act_observer``.
        observe: Feeds every grid its layer's inputs.
        process: This process and the others (ranges are all-reduced under DDP).
        device: Where the grids live (default: the process's device).

    Raises:
        UserError: If a layer's inputs are not finite.

    Example:
        >>> x = torch.rand(16, 4)
        >>> process = ProcessContext(torch.device("cpu"), 0, 1)
        >>> grids = calibrate_input_grids(["fc"], QuantConfig(act_bits=8),
        ...                               lambda g: g["fc"].observe(x), process)
        >>> int(grids["fc"].quant_max)
        255
    """
    assert quant.act_bits is not None
    grids = {
        name: ActivationQuantizer(quant.act_bits, quant.act_symmetric).to(device or process.device)
        for name in names
    }
    observe(grids)
    for name, grid in grids.items():
        try:
            grid.calibrate(quant.act_observer, process)
        except ValueError as error:
            raise UserError(f"activation calibration of {name!r}: {error}") from None
    return grids
