"""The package layering, walked over the source (ast, no imports executed): who may import whom.

    runtime  ◄─ calibration ◄─ export ◄─ bench
       ▲  ◄──────── train ◄──────────────┘
    runtime/cli.py is the application on top: it wires every package's command and nothing imports it.

Lazy imports inside functions count: they are dependencies too, only deferred. A cycle between packages or between
modules, or runtime importing export / calibration / train / bench, fails with the import that causes it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "calibration", "train", "bench")
CLI = "respi_edge.runtime.cli"
ALLOWED = {  # package -> packages it may import (besides itself)
    "runtime": set(),
    "calibration": {"runtime"},
    "export": {"runtime", "calibration"},
    "train": {"runtime"},
    "bench": {"runtime", "export", "calibration", "train"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(["respi_edge", *parts])] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported respi_edge module, line) for every import in a file, at any depth, relative ones resolved."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import mod` imports a module when one of that name exists
            found += [(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod, node.lineno) for a in node.names]
    return [(m, ln) for m, ln in found if m.startswith("respi_edge.")]


def _target(mod: str) -> str | None:
    """The known module an import names (its longest known prefix)."""
    while mod and mod not in MODULES:
        mod = mod.rpartition(".")[0]
    return mod or None


GRAPH = {name: sorted({t for m, _ in _imports(name, p) if (t := _target(m)) and t != name})
         for name, p in MODULES.items()}


def _package(mod: str) -> str:
    return "cli" if mod == CLI else mod.split(".")[1]


def test_the_walk_sees_the_code():
    """A walk that found nothing would pass everything: check it sees known edges."""
    assert len(MODULES) > 40
    assert "respi_edge.runtime.bundle" in GRAPH["respi_edge.runtime.api"]  # a lazy, relative import
    assert "respi_edge.runtime.backends.onnx_audio" in GRAPH["respi_edge.runtime.backends.torch_bundle"]
    assert "respi_edge.export.exporter" in GRAPH[CLI]


def test_packages_import_only_the_layers_below():
    bad = []
    for name, path in MODULES.items():
        src = _package(name)
        for m, line in _imports(name, path):
            dst = _package(_target(m) or m)
            if dst == "cli" and src != "cli":
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the CLI ({m})")
            elif src != "cli" and dst != src and dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {dst} ({m})")
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one node (Tarjan), as a readable path."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_packages():
    pkgs: dict[str, set[str]] = {}
    for name, deps in GRAPH.items():
        pkgs.setdefault(_package(name), set()).update(_package(d) for d in deps if _package(d) != _package(name))
    assert _cycles({k: sorted(v) for k, v in pkgs.items()}) == []


def test_no_import_cycle_between_modules():
    # a package's __init__ importing its own modules is how packages re-export; everything else is a real cycle
    graph = {n: [d for d in deps if not (n.startswith(d + ".") and MODULES[d].name == "__init__.py")]
             for n, deps in GRAPH.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("forbidden", ["respi_edge.bench.stats", "respi_edge.bench.verify"])
def test_statistics_and_scoring_live_outside_bench(forbidden):
    assert forbidden not in MODULES
