"""The package's shape: no import cycles, layers that point one way, functions that fit a screen."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adaround_lightning"
#: Each subpackage and what it may import from the package (besides itself).
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "quant": {"core"},
    "graph": {"core"},
    "calibration": {"core", "quant", "graph"},
    "export": {"core", "quant", "graph", "calibration"},
    "onnx_model": {"core", "quant", "graph", "calibration", "export"},
    "app": {"core", "data", "quant", "graph", "calibration", "export", "onnx_model"},
}
#: The leaf that produces BENCHMARKS.md: exempt from the function-length rule, imported by none.
LEAF = "benchmarks"
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _imports(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Package modules that ``module`` imports, at any depth (function-level imports too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                package = module.split(".")[: -node.level or None]
                base = ".".join([*package, node.module])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known and name != module}


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {name: _imports(name, tree, known) for name, tree in sources.items()}


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and module in _packages()) else ""


@functools.cache
def _packages() -> set[str]:
    return {_module_name(p) for p in PACKAGE.rglob("__init__.py")}


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_subpackages_depend_one_way() -> None:
    for module, targets in _graph().items():
        layer = _subpackage(module)
        if layer not in LAYERS:
            continue
        for target in targets:
            other = _subpackage(target)
            if other and other != layer:
                assert other in LAYERS[layer], f"{module} imports {target}: {layer} -> {other}"


def test_nothing_outside_the_benchmarks_leaf_imports_it() -> None:
    for module, targets in _graph().items():
        if _subpackage(module) == LEAF:
            continue
        leaf = sorted(t for t in targets if _subpackage(t) == LEAF)
        assert not leaf, f"{module} imports the benchmarks leaf: {leaf}"


def test_functions_fit_on_a_screen() -> None:
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if _subpackage(_module_name(path)) == LEAF:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length})")
    assert not long, "functions over 80 lines: " + ", ".join(long)


def test_the_architecture_table_names_modules_that_exist() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(adaround_lightning(?:\.\w+)*)`", section))
    assert len(named) >= 10, "the Architecture section names too few modules"
    modules = set(_sources())
    for module in named:
        assert module in modules, f"README Architecture names {module}, which does not exist"
