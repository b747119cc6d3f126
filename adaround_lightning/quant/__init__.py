"""Quantization maths: AdaRound's quantizer and loss, weight grids, activation quantizers.

:mod:`.quantizer` (``AdaroundFakeQuantizer``, eqs. 22-23), :mod:`.loss` (eqs. 24-25),
:mod:`.observers`, :mod:`.grids` (how a weight grid's scale is chosen), :mod:`.factory`
(a weight's quantizer), :mod:`.activations` (input quantizers), :mod:`.config`
(``QuantConfig``). Depends only on :mod:`adaround_lightning.core`.
"""
