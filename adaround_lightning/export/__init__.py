"""Export: integer weights, AIMET encodings, an int8 ONNX model, the run-dir files and the check.

Modules: :mod:`.integers` (the integers and their files), :mod:`.encodings` (AIMET),
:mod:`.onnx` (int8 ONNX, onnxruntime), :mod:`.run_dir` (which files a run writes),
:mod:`.verify` (the grid check).
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
