"""Per-layer progress checkpoints, so a killed calibration resumes after its last finished layer.

After every finished layer the driver writes that layer's file (its quantizer's state: scale,
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
from pathlib import Path
from typing import Any

import torch

from adaround_lightning.atomic import atomic_write
from adaround_lightning.errors import UserError

__all__ = ["INDEX_FILE", "load_progress", "save_layer_progress"]

_VERSION = 1
#: The index file inside the checkpoint folder.
INDEX_FILE = "progress.json"


def save_layer_progress(
    folder: Path, tag: str, order: list[str], name: str, entry: dict[str, Any]
) -> None:
    """Record that layer ``name`` finished; ``order`` lists all finished layers, ``name`` last.

    Args:
        folder: The checkpoint folder (created if needed).
        tag: Fingerprint of the run's settings.
        order: Names of the finished layers in calibration order, ending with ``name``.
        name: The layer just finished.
        entry: ``{"state": quantizer state_dict, "bits", "per_channel", "report"}``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> save_layer_progress(folder, "cfg", ["fc"], "fc", {"bits": 4})
        >>> load_progress(folder, "cfg")
        {'fc': {'bits': 4}}
    """
    folder.mkdir(parents=True, exist_ok=True)
    file_name = f"layer_{len(order) - 1:04d}.pt"
    atomic_write(folder / file_name, lambda tmp: torch.save(entry, tmp))
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


def load_progress(folder: Path, tag: str) -> dict[str, dict[str, Any]]:
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
        path = folder / index["files"][name]
        try:
            finished[name] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserError(
                f"cannot read {path} ({type(error).__name__}); delete {folder} to start afresh"
            ) from None
    return finished
