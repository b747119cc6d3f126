"""Export: integer weights, AIMET encodings, int8 ONNX, the run files and the grid check.

:mod:`.integers`, :mod:`.encodings`, :mod:`.onnx`, :mod:`.run_dir`, :mod:`.grid_check`.
"""

from adaround_lightning.export.encodings import aimet_encodings
from adaround_lightning.export.grid_check import verify_grid
from adaround_lightning.export.integers import (
    GridCheckError,
    QuantizedLayer,
    load_input_quantizers,
    load_quantized_weights,
    quantized_layers,
    quantizer_states,
    save_quantized_weights,
)
from adaround_lightning.export.onnx import export_onnx, onnx_integers, onnx_logits
from adaround_lightning.export.run_dir import (
    ENCODINGS_FILE,
    FLOAT_WEIGHTS_FILE,
    MODEL_FILE,
    ONNX_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    ExportConfig,
    export_run,
)

__all__ = [
    "ENCODINGS_FILE",
    "FLOAT_WEIGHTS_FILE",
    "MODEL_FILE",
    "ONNX_FILE",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "ExportConfig",
    "GridCheckError",
    "QuantizedLayer",
    "aimet_encodings",
    "export_onnx",
    "export_run",
    "load_input_quantizers",
    "load_quantized_weights",
    "onnx_integers",
    "onnx_logits",
    "quantized_layers",
    "quantizer_states",
    "save_quantized_weights",
    "verify_grid",
]
