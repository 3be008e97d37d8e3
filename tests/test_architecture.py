"""The package's shape, as docs/architecture.md states it: layers import downwards only, no import cycles, a config
that loads no model code, few deferred imports (optional heavy dependencies only) and functions that fit a screen."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "detkit"

#: what each part of detkit may import (besides itself); docs/architecture.md has the same table
ALLOWED = {
    "errors": set(),
    "io": set(),
    "collectives": set(),
    "config": {"errors", "io"},
    "ops": set(),
    "viz": {"io"},
    "data": {"config", "errors", "io", "ops"},
    "models": {"config", "errors", "io", "ops"},
    "eval": {"collectives", "config", "data", "errors", "io", "models", "ops", "viz"},
    "engine": {"collectives", "config", "data", "errors", "eval", "io", "models", "ops", "viz"},
    "infer": {"config", "data", "errors", "io", "models", "ops", "viz"},
    "export": {"config", "data", "errors", "infer", "io", "models", "ops"},
    "cli": {"config", "errors"},
}
#: optional or heavy third-party modules that may be imported inside a function (and nothing else may)
DEFERRABLE = ("torch.utils.tensorboard", "timm", "huggingface_hub", "safetensors", "onnxruntime", "onnx")
MAX_DEFERRED = 10
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(), filename=str(path))
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The detkit modules an import statement names (``from a.b import c`` is ``a.b.c`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("detkit")]
    base = node.module or ""
    if node.level:
        package = module.split(".") if module in _packages() else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    if not base.startswith("detkit"):
        return []
    targets = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        targets.append(candidate if candidate in MODULES else base)
    return targets


def _packages() -> set[str]:
    return {".".join(p.relative_to(PACKAGE.parent).parts[:-1]) for p in PACKAGE.rglob("__init__.py")}


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported (module body, also under ``if``/``try``), not TYPE_CHECKING."""
    found = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, tree in MODULES.items():
        for node in _top_level_imports(tree):
            edges[module].update(t for t in _resolve(module, node) if t != module)
    return edges


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_import_detkit_config_loads_no_torch_no_models_and_no_engine():
    code = ("import sys, detkit.config; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('detkit.engine', 'detkit.models'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_parts_import_only_the_layers_below_them():
    wrong = []
    for module, targets in _graph().items():
        part = _part(module)
        for target in targets:
            other = _part(target)
            if other and other != part and other not in ALLOWED.get(part, set()):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_every_part_is_in_the_layer_table():
    parts = {_part(m) for m in MODULES if _part(m)}
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to ALLOWED and docs/architecture.md"


def test_there_are_no_import_cycles():
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def _functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    return [(module, node) for module, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_deferred_imports_are_few_and_only_for_optional_heavy_dependencies():
    deferred = []
    for module, fn in _functions():
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                deferred += [(module, fn.name, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                deferred.append((module, fn.name, node.module or ""))
    not_optional = [d for d in deferred if not d[2].startswith(DEFERRABLE)]
    assert not not_optional, f"move these imports to the top of their modules: {not_optional}"
    assert len(deferred) <= MAX_DEFERRED, deferred


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_bodies_fit_on_a_screen(module):
    long = []
    for mod, fn in _functions():
        if mod != module:
            continue
        body = fn.body
        first = body[1] if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(
            getattr(body[0], "value", None), ast.Constant) else body[0]
        lines = fn.end_lineno - first.lineno + 1
        if lines > MAX_FUNCTION_LINES:
            long.append(f"{fn.name} ({lines} lines)")
    assert not long, f"split along their natural steps: {long}"
