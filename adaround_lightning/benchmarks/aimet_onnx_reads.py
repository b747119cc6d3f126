"""Check that aimet-onnx reads a ``export.target=qnn`` run integer for integer (AIMET-ONNX venv).

Run as::

    AIMET_ONNX_VENV/bin/python -m adaround_lightning.benchmarks.aimet_onnx_reads --run RUN_DIR

It builds aimet-onnx's ``QuantizationSimModel`` on the run's ``model_qnn.onnx``, loads
``model_qnn.encodings`` with ``load_encodings_to_sim`` (quantizers without an encoding
disabled), and compares, weight by weight, AIMET's integers ``round(Q_aimet(W) / s_aimet)``
(its own quantize-dequantize kernel on the initializer) with ours in
``quantized_weights.safetensors``. Then it runs the sim and ``model.onnx`` (onnxruntime) on the
same random inputs and reports the largest logit gap and the predicted-class agreement, as one
JSON line in the log.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "read_run"]

log = logging.getLogger(__name__)


def _our_integers(run: Path) -> dict[str, np.ndarray]:
    """``{tensor name in model.onnx: q}`` of every quantized weight."""
    import onnx
    from safetensors.numpy import load_file

    arrays = load_file(str(run / "quantized_weights.safetensors"))
    graph = onnx.load(str(run / "model.onnx")).graph
    return {
        node.output[0]: arrays[node.input[0].removesuffix(".weight_quantized") + ".q"]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.input[0].endswith(".weight_quantized")
    }


def _inputs(run: Path, samples: int, seed: int, quickstart: bool) -> np.ndarray:
    """The embedded quickstart test images (preprocessed), or random normal inputs."""
    if quickstart:
        import torch

        from adaround_lightning.benchmarks.train_quickstart import quickstart_transform_tensor
        from adaround_lightning.data.sources import EMBEDDED_SAMPLE

        images = torch.from_numpy(np.load(EMBEDDED_SAMPLE)["test_images"][:samples])
        return quickstart_transform_tensor(images).numpy().astype(np.float32)
    shape = json.loads((run / "manifest.json").read_text())["input_shape"]
    return np.random.default_rng(seed).standard_normal((samples, *shape)).astype(np.float32)


def read_run(
    run: Path, samples: int = 64, seed: int = 0, quickstart: bool = False
) -> dict[str, Any]:
    """Load the run's QNN files into aimet-onnx and compare (see the module docstring)."""
    import onnx
    import onnxruntime as ort
    from aimet_onnx.quantsim import QuantizationSimModel, load_encodings_to_sim
    from onnx import numpy_helper

    model = onnx.load(str(run / "model_qnn.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    sim = QuantizationSimModel(model)
    mismatches = load_encodings_to_sim(sim, str(run / "model_qnn.encodings"), strict=False)
    ours = _our_integers(run)
    integers = identical = 0
    for name, q in ours.items():
        op = sim.qc_quantize_op_dict[name]
        encodings = op.get_encodings()
        scale = np.array([e.delta for e in encodings], np.float64)
        shape = (-1,) + (1,) * (q.ndim - 1) if scale.size > 1 else ()
        fake = op.quantize_dequantize(weights[name].astype(np.float32)).astype(np.float64)
        aimet_q = np.rint(fake / scale.reshape(shape))
        integers += q.size
        identical += int((aimet_q == q.astype(np.float64)).sum())
    x = _inputs(run, samples, seed, quickstart)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(run / "model.onnx"), options)
    input_name = session.get_inputs()[0].name
    ours_logits = session.run(None, {input_name: x})[0]
    aimet_logits = sim.session.run(None, {sim.session.get_inputs()[0].name: x})[0]
    return {
        "run": run.name,
        "inputs": f"{len(x)} {'quickstart test images' if quickstart else 'random normal'}",
        "weights": len(ours),
        "integers": integers,
        "identical": identical,
        "activation_encodings": len(
            json.loads((run / "model_qnn.encodings").read_text())["activation_encodings"]
        ),
        "encoding_mismatches": len(mismatches or []),
        "max_abs_logit_diff": float(np.abs(aimet_logits - ours_logits).max()),
        "max_abs_logit": float(np.abs(ours_logits).max()),
        "top1_agreement": float(100.0 * np.mean(aimet_logits.argmax(-1) == ours_logits.argmax(-1))),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--run RUN_DIR [--samples N] [--quickstart]``; logs one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a run dir of export.target=qnn")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument(
        "--quickstart", action="store_true", help="the embedded test images, not random inputs"
    )
    args = parser.parse_args(argv)
    result = read_run(
        args.run, args.samples, quickstart=args.quickstart
    )  # aimet-onnx configures logging on import
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    log.info("%s", json.dumps(result))
    return 0 if result["identical"] == result["integers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
