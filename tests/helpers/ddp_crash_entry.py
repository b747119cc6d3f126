"""Run the app with a crash injected on DDP rank 1 at the fourth layer (for test_distributed).

Lightning relaunches this same script for rank 1, so the patch is active there too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from adaround_lightning.app import cli
from adaround_lightning.engine.cache import activation_cache as datamodule

_original = datamodule.CalibrationCache.cache_layer


def _crashing(self: datamodule.CalibrationCache, *args: object, **kwargs: object) -> None:
    layer_index = kwargs.get("layer_index", args[5] if len(args) > 5 else None)
    if os.environ.get("LOCAL_RANK") == "1" and layer_index == 3:
        raise RuntimeError("injected crash on rank 1")
    _original(self, *args, **kwargs)  # type: ignore[arg-type]


datamodule.CalibrationCache.cache_layer = _crashing  # type: ignore[method-assign]

if __name__ == "__main__":
    cli.main()
