"""Every Example in the package's docstrings runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adaround_lightning"
#: Examples that need files this machine may not have (the Fashion-MNIST idx files, AIMET).
NEEDS_FILES = {"adaround_lightning.data.idx", "adaround_lightning.benchmarks.aimet_adaround"}
#: Command entry points: importing them is all there is.
ENTRY_POINTS = {"adaround_lightning.__main__"}


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in NEEDS_FILES | ENTRY_POINTS:
            names.append(name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
