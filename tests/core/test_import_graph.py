"""The core's import graph has no cycle (imports under ``TYPE_CHECKING`` and inside functions count).

Run as a script to print the graph: ``python tests/core/test_import_graph.py [repo root]``.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def import_graph(root: pathlib.Path) -> dict[str, list[str]]:
    """``{module: [gatewayd modules it imports]}`` for every module of the ``gatewayd`` package under ``root``."""
    files: dict[str, pathlib.Path] = {}
    for f in (root / "gatewayd").rglob("*.py"):
        name = ".".join(f.relative_to(root).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = f

    def targets(cur: str, node: ast.AST) -> set[str]:
        out: set[str] = set()
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = cur.split(".")
            if node.level:
                keep = len(base) - node.level + (1 if files[cur].name == "__init__.py" else 0)
                prefix = ".".join(base[:keep] + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{a.name}" for a in node.names)
        return {m for m in out if m in files}

    graph = {}
    for name, f in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            deps |= targets(name, node)
        deps.discard(name)
        graph[name] = sorted(deps)
    return graph


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_core_has_no_import_cycle():
    graph = import_graph(ROOT)
    assert "gatewayd.plugin" in graph and "gatewayd.daemon" in graph
    assert cycles(graph) == [], "import cycle(s) in gatewayd/: " + "; ".join(" <-> ".join(c) for c in cycles(graph))


def test_nothing_outside_the_runtime_imports_the_daemon():
    # The daemon (the concrete Gateway) is imported only by the CLI and the test harness;
    # everything else reaches the running gateway through gatewayd.plugin.GatewayAPI.
    graph = import_graph(ROOT)
    importers = sorted(m for m, deps in graph.items() if "gatewayd.daemon" in deps)
    assert importers == ["gatewayd.cli", "gatewayd.testing"]


def test_first_party_plugins_import_only_the_face():
    allowed = {"gatewayd.plugin", "gatewayd.testing"}
    offenders = []
    for sub in ("modbus", "sim"):
        for f in (ROOT / "plugins" / sub).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module
                        else [])
                offenders += [f"{f.relative_to(ROOT)}:{node.lineno}: {m}" for m in mods
                              if (m == "gatewayd" or m.startswith("gatewayd.")) and m not in allowed]
    assert offenders == []


if __name__ == "__main__":  # pragma: no cover - the command for the import graph
    g = import_graph(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
    for k in sorted(g):
        print(f"{k}: {', '.join(g[k])}")
    print("cycles:", cycles(g) or "none")
