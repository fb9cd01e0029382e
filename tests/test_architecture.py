"""The package's import structure: no circles, and every import runs down the layer table.

Every module of python/slimrt is parsed with ``ast`` (module-level, function-level and
TYPE_CHECKING imports alike: a lazy import is still a dependency) and its imports of slimrt
modules become edges of a graph. ``LAYERS`` is the table docs/architecture.md describes; a module
may import modules of its own layer and of the layers below it, never above.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

# SLIMRT_ARCH_ROOT=/other/checkout/python/slimrt runs the same checks on another tree.
ROOT = Path(os.environ.get("SLIMRT_ARCH_ROOT") or Path(__file__).resolve().parents[1] / "python" / "slimrt")

# Lowest first. A module belongs to the entry with the longest matching name ("slimrt" itself is
# the package face, slimrt/__init__.py).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("slimrt.errors", "slimrt._version", "slimrt.recipe", "slimrt.attention", "slimrt.data",
                "slimrt.tokenizer", "slimrt.charts")),
    ("native", ("slimrt._native", "slimrt._C", "slimrt.kernels")),
    ("ops", ("slimrt.ops",)),
    ("nn", ("slimrt.nn",)),
    ("checkpoint / compress", ("slimrt.checkpoint", "slimrt.compress", "slimrt.gguf")),
    ("models", ("slimrt.models",)),
    ("runner", ("slimrt.runner", "slimrt.chat")),
    ("evaluate / distill", ("slimrt.evaluate", "slimrt.distill", "slimrt.metrics", "slimrt.corpus", "slimrt.sweep")),
    ("face", ("slimrt", "slimrt._info")),
    ("cli / demo", ("slimrt.cli", "slimrt.demo", "slimrt.serve", "slimrt.ray")),
]

# Loading and running a model must not need the compressor: nothing these import, directly or
# not, is part of slimrt.compress.
RUNTIME = ("slimrt.checkpoint", "slimrt.models", "slimrt.runner")
COMPRESSOR = "slimrt.compress"


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file for every module under ``root`` (the slimrt package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(["slimrt", *parts])] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return name == "slimrt" or modules.get(name, Path()).name == "__init__.py"


def _resolve_from(node: ast.ImportFrom, name: str, modules: dict[str, Path]) -> str:
    """The absolute module a relative ``from`` import starts from."""
    if not node.level:
        return node.module or ""
    base = name if _is_package(name, modules) else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported slimrt module, line) for every import statement in the file, at any depth.

    ``from slimrt.x import y`` imports slimrt.x.y when that is a module, else slimrt.x. The parent
    packages an import runs implicitly are not counted: every submodule would otherwise depend on
    its package's __init__.
    """
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "slimrt"]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, name, modules)
            if base.split(".")[0] != "slimrt":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in modules or sub.startswith(("slimrt._C", "slimrt.kernels"))
                            else base, node.lineno))
    return out


def import_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """module -> {imported module: ["file:line", ...]}, self-imports left out."""
    modules = module_names(root)
    graph: dict[str, dict[str, list[str]]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in imports_of(name, path, modules):
            if target != name:
                edges.setdefault(target, []).append(f"{path.relative_to(root.parent)}:{line}")
    return graph


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = module == p if p == "slimrt" else (module == p or module.startswith(p + "."))
            if hit and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def upward_edges(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    """'file:line: a (layer) imports b (higher layer)' for every import that runs up the table."""
    bad = []
    for src, edges in sorted(graph.items()):
        for dst, where in sorted(edges.items()):
            ls, ld = layer_of(src), layer_of(dst)
            if ls is not None and ld is not None and ld > ls:
                bad += [f"{w}: {src} ({LAYERS[ls][0]}) imports {dst} ({LAYERS[ld][0]})" for w in where]
    return bad


def test_every_module_has_a_layer():
    missing = [m for m in module_names() if layer_of(m) is None]
    assert not missing, f"add these modules to LAYERS in {os.path.basename(__file__)}: {missing}"


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_imports_run_down_the_layers():
    bad = upward_edges(import_graph())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_running_needs_no_compressor():
    graph = import_graph()
    bad = []
    for start in sorted(m for m in graph if m.startswith(RUNTIME)):
        path = _path_to(graph, start, lambda m: m == COMPRESSOR or m.startswith(COMPRESSOR + "."))
        if path:
            bad.append(" -> ".join(path) + f"  ({graph[path[0]][path[1]][0]})")
    assert not bad, "the runtime imports the compressor:\n" + "\n".join(bad)


def _path_to(graph: dict[str, dict[str, list[str]]], start: str, goal) -> list[str] | None:
    """The shortest import chain from ``start`` to a module ``goal`` accepts, or None."""
    prev: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        if goal(node) and node != start:
            path = [node]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])
            return path[::-1]
        for nxt in sorted(graph.get(node, {})):
            if nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    return None
