"""The package's shape: no import cycle, dependencies one way, short functions, unique names.

The layering map is the architecture table in docs/architecture.md: each subpackage may
import only the ones listed for it (and itself).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adaround_lightning"
NAME = "adaround_lightning"

#: Subpackage (or top-level module) -> what it may import. Lower layers first.
LAYERS: dict[str, set[str]] = {
    "core": set(),
    "quant": {"core"},
    "graph": {"core", "quant"},
    "data": {"core"},
    "models": {"core", "data"},
    "engine": {"core", "quant", "graph"},
    "export": {"core", "quant", "graph", "engine"},
    "onnx_frontend": {"core", "quant", "graph", "engine", "export"},
    "torch_frontend": {"core", "quant", "graph", "engine", "export", "models"},
    "api": {"core", "quant", "engine", "onnx_frontend", "torch_frontend"},
    "__init__": {"core", "quant", "engine", "export", "onnx_frontend", "torch_frontend", "api"},
    "app": {
        *("core", "quant", "graph", "data", "models", "engine", "export"),
        *("onnx_frontend", "torch_frontend", "api", "__init__"),
    },
    # `python -m adaround_lightning[.verify|.bench|.summarize]`: entry points over the app.
    "__main__": {"app"},
    "verify": {"app"},
    "bench": {"app"},
    "summarize": {"app"},
}
#: Tools beside the library (not in the wheel): they may use all of it, nothing imports them.
TOOLS = "benchmarks"
#: The longest a library function may be, from ``def`` to its last line.
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        modules[".".join((NAME, *parts))] = path
    return modules


def _under_type_checking(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    return skipped


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules ``path`` imports (function-level too; ``TYPE_CHECKING`` blocks not)."""
    tree = ast.parse(path.read_text())
    skipped = _under_type_checking(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules and name.startswith(NAME + "."):
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    for name, imported in graph.items():  # `from pkg.sub import mod` also imports pkg.sub
        imported.discard(name)
    return graph


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                cycle = [*stack[stack.index(child) :], child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_dependencies_follow_the_layering_map() -> None:
    wrong = []
    for module, imported in _graph().items():
        area = _area(module)
        if area == TOOLS:
            continue
        assert area in LAYERS, f"{module}: add its subpackage to LAYERS (and docs/architecture.md)"
        for target in imported:
            other = _area(target)
            if other != area and other not in LAYERS[area]:
                wrong.append(f"{module} imports {target} ({area} -> {other})")
    assert not wrong, "\n".join(wrong)


def _function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from ``def`` to the end, docstring included."""
    return node.end_lineno - node.lineno + 1


def test_no_library_function_is_over_60_lines() -> None:
    long = []
    for module, path in _modules().items():
        if _area(module) == TOOLS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and _function_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)


def test_no_two_modules_share_a_file_name() -> None:
    names = Counter(
        path.name
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    )
    assert not [name for name, count in names.items() if count > 1]


def test_nothing_in_the_library_imports_the_tools() -> None:
    users = [
        m
        for m, imported in _graph().items()
        if _area(m) != TOOLS and any(_area(t) == TOOLS for t in imported)
    ]
    assert not users
