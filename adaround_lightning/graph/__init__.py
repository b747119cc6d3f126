"""What is read off or done to a PyTorch network, independent of any fit.

Modules: trace, outputs, bn_fold, bias_correction, capture, functional, functional_weights,
attention.

Depends on :mod:`adaround_lightning.quant` and :mod:`adaround_lightning.core`.
"""
