"""Per-layer progress checkpoints, so a killed calibration resumes after its last finished layer.

After every finished layer the walk writes that layer's file (its quantizer's state: scale,
learned ``V``, ``floor(W/s)``; its bits; its report) and then rewrites a small index listing the
finished layers, each atomically (temporary name, then rename): a kill at any moment leaves
either the old or the new index, never a partial one, and each file is written once (no
quadratic rewriting of all layers). That is all a restart needs: the float network is rebuilt
from the same config, the finished layers get ``s * q`` back, and calibration continues with the
next layer, whose random batches are seeded by its index, so the final integers equal an
uninterrupted run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaround_lightning.core.atomic import atomic_write
from adaround_lightning.core.errors import UserError
from adaround_lightning.engine.records.results import LayerReport, RefinementReport
from adaround_lightning.quant.activations import ActivationQuantizer
from adaround_lightning.quant.factory import make_quantizer
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer

__all__ = [
    "INDEX_FILE",
    "REFINEMENT_FILE",
    "ActivationGrid",
    "LayerCheckpoint",
    "load_progress",
    "load_refinement",
    "save_layer_progress",
    "save_refinement",
]

_VERSION = 1
#: The index file inside the checkpoint folder.
INDEX_FILE = "progress.json"


@dataclass(frozen=True)
class ActivationGrid:
    """A calibrated input quantizer's grid, as checkpointed (CPU tensors)."""

    bits: int
    scale: torch.Tensor
    zero_point: torch.Tensor
    symmetric: bool = False

    @classmethod
    def of(cls, quantizer: ActivationQuantizer) -> ActivationGrid:
        """The grid of a calibrated input quantizer."""
        return cls(
            quantizer.bits,
            quantizer.scale.detach().cpu(),
            quantizer.zero_point.detach().cpu(),
            quantizer.symmetric,
        )

    def to_quantizer(self, device: torch.device) -> ActivationQuantizer:
        """A calibrated input quantizer with this grid, on ``device``."""
        quantizer = ActivationQuantizer(self.bits, self.symmetric).to(device)
        quantizer.scale.copy_(self.scale)
        quantizer.zero_point.copy_(self.zero_point)
        quantizer.calibrated = True
        return quantizer


@dataclass(frozen=True)
class LayerCheckpoint:
    """What a finished layer leaves for a resume: ``torch.save`` of :meth:`to_dict`.

    Attributes:
        state: The quantizer's ``state_dict`` on the CPU (scale, learned ``V``, ``floor(W/s)``).
        bits: Bit width.
        per_channel: Per-channel scales or one per tensor.
        report: The layer's report.
        bias: The bias after bias correction (None without it, or without a bias).
        act_state: The layer's input grid with activation quantization in the loop, or None.
        floor_scale: With a learned scale, the grid ``floor(W/s)`` was taken on (else None).

    Example:
        >>> report = LayerReport("fc", "Linear", [2, 3], 4, True, None, 0.2, 0.1, 0.0, 1.0, 10)
        >>> entry = LayerCheckpoint({}, 4, True, report)
        >>> LayerCheckpoint.from_dict(entry.to_dict()) == entry
        True
    """

    state: dict[str, torch.Tensor]
    bits: int
    per_channel: bool
    report: LayerReport
    bias: torch.Tensor | None = None
    act_state: ActivationGrid | None = None
    floor_scale: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain types and tensors only (``torch.load(weights_only=True)`` reads them)."""
        act = self.act_state
        return {
            "state": self.state,
            "bits": self.bits,
            "per_channel": self.per_channel,
            "report": self.report.to_dict(),
            "bias": self.bias,
            "act_state": None
            if act is None
            else {
                "bits": act.bits,
                "scale": act.scale,
                "zero_point": act.zero_point,
                "symmetric": act.symmetric,
            },
            "floor_scale": self.floor_scale,
        }

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> LayerCheckpoint:
        """Read :meth:`to_dict`'s form; entries from before bias correction lack ``bias``."""
        act = entry.get("act_state")
        return cls(
            state=entry["state"],
            bits=entry["bits"],
            per_channel=entry["per_channel"],
            report=LayerReport(**entry["report"]),
            bias=entry.get("bias"),
            act_state=None
            if act is None
            else ActivationGrid(
                act["bits"], act["scale"], act["zero_point"], bool(act.get("symmetric", False))
            ),
            floor_scale=entry.get("floor_scale"),
        )

    def quantizer(self, device: torch.device) -> AdaroundFakeQuantizer:
        """The finished layer's quantizer on ``device``, in hard-rounding mode."""
        quantizer = make_quantizer(self.bits, self.per_channel).to(device)
        quantizer.load_state_dict(self.state)
        quantizer.use_soft_rounding = False
        if self.floor_scale is not None:
            quantizer.floor_scale = self.floor_scale.to(device)
        return quantizer


def save_layer_progress(
    folder: Path, tag: str, order: list[str], name: str, entry: LayerCheckpoint
) -> None:
    """Record that layer ``name`` finished; ``order`` lists all finished layers, ``name`` last.

    Args:
        folder: The checkpoint folder (created if needed).
        tag: Fingerprint of the run's settings.
        order: Names of the finished layers in calibration order, ending with ``name``.
        name: The layer just finished.
        entry: The layer's checkpoint record.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> report = LayerReport("fc", "Linear", [2, 3], 4, True, None, 0.2, 0.1, 0.0, 1.0, 10)
        >>> save_layer_progress(folder, "cfg", ["fc"], "fc", LayerCheckpoint({}, 4, True, report))
        >>> load_progress(folder, "cfg")["fc"].bits
        4
    """
    folder.mkdir(parents=True, exist_ok=True)
    file_name = f"layer_{len(order) - 1:04d}.pt"
    atomic_write(folder / file_name, lambda tmp: torch.save(entry.to_dict(), tmp))
    files = _read_index(folder).get("files", {}) if (folder / INDEX_FILE).is_file() else {}
    files = {n: f for n, f in files.items() if n in order}
    files[name] = file_name
    index = {"version": _VERSION, "tag": tag, "order": order, "files": files}
    atomic_write(folder / INDEX_FILE, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / INDEX_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(
            f"cannot read {folder / INDEX_FILE} ({type(error).__name__}); delete {folder} "
            "to start the calibration afresh"
        ) from None


def load_progress(folder: Path, tag: str) -> dict[str, LayerCheckpoint]:
    """The finished layers recorded in ``folder``, in calibration order (empty if none yet).

    Raises:
        UserError: If the checkpoint belongs to a run with other settings or is unreadable.
    """
    if not (folder / INDEX_FILE).is_file():
        return {}
    index = _read_index(folder)
    if index.get("version") != _VERSION or index.get("tag") != tag:
        raise UserError(
            f"{folder} was written by a run with other settings: resume with the same config, "
            "or start a new run dir"
        )
    finished = {}
    for name in index["order"]:
        entry = _load_record(folder / index["files"][name], f"delete {folder} to start afresh")
        finished[name] = LayerCheckpoint.from_dict(entry)
    return finished


def _load_record(path: Path, fix: str) -> dict[str, Any]:
    """``torch.load`` of a record this module wrote; unreadable: a UserError naming ``fix``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"cannot read {path} ({type(error).__name__}); {fix}") from None


#: The refinement's record in the checkpoint folder (:func:`save_refinement`).
REFINEMENT_FILE = "refinement.pt"


def save_refinement(
    folder: Path, tag: str, report: RefinementReport, quantizers: dict[str, AdaroundFakeQuantizer]
) -> None:
    """Record the finished refinement: its report and each layer's new ``V`` and scale.

    Example:
        >>> import tempfile
        >>> from adaround_lightning.quant.factory import quantizer_for_weight
        >>> folder = Path(tempfile.mkdtemp())
        >>> fq = quantizer_for_weight(torch.randn(2, 3), 2, True, "minmax")
        >>> report = RefinementReport(2, 10, 10, 1, 0.2, 0.1, 0.05, 1.0, 8, 0.1, 0)
        >>> save_refinement(folder, "cfg", report, {"fc": fq})
        >>> loaded = load_refinement(folder, "cfg")
        >>> loaded[0].flips, bool(loaded[1]["fc"]["V"].equal(fq.V))
        (1, True)
    """
    layers = {
        name: {"V": q.V.detach().cpu(), "scale": q.scale.detach().cpu()}
        for name, q in quantizers.items()
    }
    record = {"version": _VERSION, "tag": tag, "report": report.to_dict(), "layers": layers}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / REFINEMENT_FILE, lambda tmp: torch.save(record, tmp))


def load_refinement(
    folder: Path, tag: str
) -> tuple[RefinementReport, dict[str, dict[str, torch.Tensor]]] | None:
    """The refinement an earlier run of these settings finished, or None."""
    path = folder / REFINEMENT_FILE
    if not path.is_file():
        return None
    record = _load_record(path, "delete it to refine afresh")
    if record.get("tag") != tag:
        return None  # another run's: refined again
    return RefinementReport(**record["report"]), record["layers"]
