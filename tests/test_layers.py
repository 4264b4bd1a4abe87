"""The package's layer rule (README, "Architecture"): imports point down only and form no cycle.

The graph is read from the source (every ``import`` and ``from ... import``, those inside
functions too), so a lazy import cannot hide a cycle. ``ssd_mnv1/__init__.py``, the public facade,
is left out: it re-exports from below and nothing in the package imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Installed package -> source folder (the exporter lives in export/, installed as ssd_mnv1.export).
PACKAGES = {"ssd_mnv1": ROOT / "ssd_mnv1", "ssd_mnv1.export": ROOT / "export"}

#: Bottom to top. A module may import its own layer and those below; the most specific prefix wins.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("specs", "int8", "fileio", "cpus", "progress", "preprocess", "box_coder", "zoo", "download", "hub")),
    ("model", ("anchors", "layers", "backbone", "neck", "head", "model", "postprocess", "postprocess_c")),
    ("quantization and metrics", ("quantization", "metrics")),
    ("model files", ("weights", "checkpoint", "loading", "tflite_file", "memory_plan")),
    ("data and runners", ("data", "runners")),
    ("training and evaluation", ("training", "evaluation", "prediction", "reproduction", "footprint_analysis")),
    ("export", ("export",)),
    ("commands", ("cli", "fit", "evaluate", "predict", "reproduce", "footprint", "convert", "prepare_data",
                  "synthetic", "export.__main__", "export.compat")),
)


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    del found["ssd_mnv1"]
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (names relative to ``ssd_mnv1``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)] if node.level else []
                stem = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                candidates = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets.update(c for c in candidates if c in modules and c != name)
        graph[_short(name)] = {_short(t) for t in targets}
    return graph


def _short(name: str) -> str:
    return name.removeprefix("ssd_mnv1.")


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix naming ``module``."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise KeyError(module)
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    unplaced = []
    for module in graph:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"give these modules a layer in tests/test_layers.py LAYERS (and the README): {unplaced}"


def test_the_package_has_no_import_cycle(graph):
    assert cycles(graph) == []


def test_imports_point_down_only(graph):
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in sorted(graph.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


def test_the_checker_sees_lazy_imports_and_cycles():
    # the rule must be able to fail: a function-level import closing a loop is a cycle
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(toy) == [["a", "b", "c"]]
    assert layer_of("runners.tflm") == layer_of("runners") > layer_of("loading")
    assert layer_of("export.__main__") > layer_of("export.pipeline") == layer_of("export.ledger")


def test_the_readme_states_the_same_layers():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[-1].split("\n## ", 1)[0]
    for name, _ in LAYERS:
        assert name in section, f"README's Architecture section does not name the layer {name!r}"


def test_commands_are_thin_mains_over_the_library():
    # a command module defines its `main` (and private printing helpers), never library code that
    # others would then import from the top layer; fit's LightningCLI subclass is the command itself
    commands = [p for p in LAYERS[-1][1] if p not in ("cli", "fit")]
    modules = _modules()
    for name in commands:
        tree = ast.parse(modules[f"ssd_mnv1.{name}"].read_text(encoding="utf-8"))
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        public = [d for d in defined if not d.startswith("_") and d != "main"]
        assert "main" in defined and not public, f"{name} defines {public}: move them to the library"
        assert not any(isinstance(n, ast.ClassDef) for n in tree.body), f"{name} defines a class"
