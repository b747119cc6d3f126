"""Which layers are quantized, at how many bits: one rule for every front end.

``quant.exclude`` leaves layers in float, ``quant.layer_bits`` patterns set their bits, and
``quant.first_layer_bits`` / ``last_layer_bits`` apply to the first and last quantizable layer in
execution order (whether or not ``quant.exclude`` keeps it in float).
"""

from __future__ import annotations

import fnmatch
from collections.abc import MutableMapping, Sequence

from adaround_lightning.core.errors import UserError
from adaround_lightning.quant.quant_config import QuantConfig

__all__ = ["EXCLUDED", "explicit_bits", "plan_bits"]

#: The reason recorded for a layer that ``quant.exclude`` keeps in float.
EXCLUDED = "excluded by quant.exclude"


def plan_bits(
    layers: Sequence[str], quant: QuantConfig, left_in_float: MutableMapping[str, str]
) -> dict[str, int]:
    """The bits of every layer to quantize; excluded layers are added to ``left_in_float``.

    Args:
        layers: Names of the quantizable layers, in execution order.
        quant: Bits and layer selection.
        left_in_float: Layers already left in float (unsupported, shared), name -> reason;
            receives the excluded ones.

    Raises:
        UserError: If a ``quant.exclude`` or ``quant.layer_bits`` pattern matches no layer
            (a typo, or a pattern written for another model), or no layer is left to quantize.

    Example:
        >>> skipped = {}
        >>> plan_bits(["conv", "fc"], QuantConfig(4, exclude=["fc"], first_layer_bits=8), skipped)
        {'conv': 8}
        >>> skipped
        {'fc': 'excluded by quant.exclude'}
    """
    _check_patterns(layers, quant)
    for name in layers:
        if quant.is_excluded(name):
            left_in_float[name] = EXCLUDED
    first, last = (layers[0], layers[-1]) if layers else ("", "")
    bits = {
        name: quant.bits_for(name, name == first, name == last)
        for name in layers
        if name not in left_in_float
    }
    if not bits:
        reasons = sorted({left_in_float[name] for name in layers if name in left_in_float})
        raise UserError(
            f"no layer is left to quantize: all {len(layers)} are excluded or unsupported "
            f"({', '.join(reasons)}); narrow quant.exclude (patterns match layer names)"
        )
    return bits


def explicit_bits(layers: Sequence[str], quant: QuantConfig) -> dict[str, int]:
    """The layers whose bits ``quant.layer_bits`` or the first/last-layer rule set.

    A budget (``quant.average_bits``, ``quant.max_size_mb``) chooses every other layer's bits.

    Example:
        >>> explicit_bits(["conv", "mid", "fc"], QuantConfig(4, last_layer_bits=8))
        {'fc': 8}
    """
    first, last = (layers[0], layers[-1]) if layers else ("", "")
    found = {name: quant.explicit_bits_for(name, name == first, name == last) for name in layers}
    return {name: bits for name, bits in found.items() if bits is not None}


def _check_patterns(layers: Sequence[str], quant: QuantConfig) -> None:
    # Silently quantizing everything at the default bits is the worse outcome of a typo.
    for setting, patterns in (
        ("quant.exclude", quant.exclude),
        ("quant.layer_bits", quant.layer_bits),
    ):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in layers):
                examples = [*layers[:3], *layers[-1:]] if len(layers) > 4 else list(layers)
                raise UserError(
                    f"{setting} pattern {pattern!r} matches no layer of the model; the "
                    f"{len(layers)} layers are named e.g. {', '.join(map(repr, examples))} "
                    "(fnmatch patterns of module names): fix or remove it"
                )
