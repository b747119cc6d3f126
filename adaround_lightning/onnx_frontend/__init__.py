"""The ONNX front end: layer inputs sampled with onnxruntime, layer by layer.

Modules: onnx_adaround, onnx_sampler, onnx_graph, onnx_loading, torch_form, onnx_result, onnx_writer.
"""  # noqa: E501 (every module on one line)
