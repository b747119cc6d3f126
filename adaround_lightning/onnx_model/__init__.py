"""The ONNX path: AdaRound applied to a float ONNX model, as aimet-onnx does it.

:mod:`.loading` (checked, opset 13+), :mod:`.graph` (the quantizable layers), :mod:`.sampler`
(onnxruntime runs with chosen weights), :mod:`.torch_form` (each layer as a PyTorch module),
:mod:`.calibrate` (``adaround_onnx``, the orchestrator around the project's fit step) and
:mod:`.export` (the QDQ graph and the run files). Depends on :mod:`adaround_lightning.calibration`,
:mod:`adaround_lightning.export`, :mod:`adaround_lightning.quant`, :mod:`adaround_lightning.graph`
and :mod:`adaround_lightning.core`.
"""
