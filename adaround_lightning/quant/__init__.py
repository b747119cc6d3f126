"""Quantization maths: AdaRound's quantizer and loss, weight grids, activation quantizers.

Modules: quantizer, soft_rounding, loss, grids, observers, factory, activations, quant_config.

Depends only on :mod:`adaround_lightning.core`.
"""
