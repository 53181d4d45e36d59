"""The package's layers import only downward, and no module imports itself back through others.

Every `import` / `from ... import` of a mirasol module counts, also those inside functions (the
lazy imports that keep `mirasol --help` fast are still dependencies). The layers, bottom first, are
in LAYERS; a module may import from its own layer or any layer below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mirasol"

# bottom first; a module's layer is the longest prefix listed here
LAYERS = [
    ["mirasol.errors", "mirasol.choices"],
    ["mirasol.config"],
    ["mirasol.run_config"],
    ["mirasol.media"],
    ["mirasol.model"],
    ["mirasol.cost"],
    ["mirasol.data"],
    ["mirasol.corpora"],
    ["mirasol.run_dir"],
    ["mirasol.eval"],
    ["mirasol.train"],
    ["mirasol.ask", "mirasol.watch", "mirasol.quickstart", "mirasol.perf", "mirasol.serve", "mirasol.ablate",
     "mirasol.export", "mirasol.model_card", "mirasol.lmms_eval"],
    ["mirasol.cli"],
    ["mirasol"],  # the package's __init__: its re-exports are lazy, resolved when first used
]


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} is in no layer: add it to LAYERS in {__file__}"
    return rank


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE.parent) -> set[str]:
    """The mirasol modules `path` imports anywhere in it (resolved to modules that exist)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from mirasol.model import generation` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # `import mirasol.model.layers.Block` style -> the module
                target = target.rpartition(".")[0]
            if target.startswith("mirasol") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def test_every_import_points_down():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in graph().items() for b in sorted(targets)
              if layer_of(b) > layer_of(a) and not a.startswith(b + ".")]  # a package's own __init__ is below it
    assert not upward, "imports that reach up a layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    g = graph()
    # a submodule importing its own package's __init__ counts: the __init__ imports its submodules
    edges = g
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("package", ["model", "media"])
def test_model_and_media_import_nothing_above(package):
    forbidden = ("mirasol.data", "mirasol.corpora", "mirasol.train", "mirasol.eval", "mirasol.run_dir", "mirasol.cli")
    bad = [f"{a} imports {b}" for a, targets in graph().items() if a.startswith(f"mirasol.{package}")
           for b in targets if b.startswith(forbidden)]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_function_level_upward_import(tmp_path):
    # the checker itself must be able to fail: a lazy import inside a function, and a relative one
    src = tmp_path / "mirasol" / "model" / "x.py"
    src.parent.mkdir(parents=True)
    src.write_text("import torch\n\ndef f():\n    from mirasol.train.loop import train\n    from ..eval import predict\n")
    modules = {"mirasol.model.x", "mirasol.train.loop", "mirasol.eval.predict", "mirasol.eval"}
    found = imports_of(src, modules, root=tmp_path)
    assert found == {"mirasol.train.loop", "mirasol.eval.predict"}
    assert all(layer_of(b) > layer_of("mirasol.model.x") for b in found)
