"""Graph work on a network: tracing, BatchNorm folding, bias correction, functional helpers.

:mod:`.trace` (layers, blocks and activations from one forward pass), :mod:`.bn_fold`,
:mod:`.bias_correction`, :mod:`.capture` (one module's input or output),
:mod:`.functional` (a layer run with another weight). Depends only on
:mod:`adaround_lightning.core`.
"""
