"""The house's layers, checked on the source: the library imports no door, server/ and trainer/ never import each
other, nothing imports cli/ but cli/, no module import cycle, and the gRPC client loads without torch or numpy."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "server", "trainer", "encoders", "indexer", "ranking", "proto")
LIBRARY = {"encoders", "indexer", "ranking"}
# Which top-level packages each may import (besides itself).
ALLOWED = {
    "encoders": set(),
    "indexer": {"encoders"},
    "ranking": {"encoders", "indexer"},
    "proto": set(),
    "server": LIBRARY | {"proto"},
    "trainer": LIBRARY,
    "cli": LIBRARY | {"proto", "server", "trainer"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "proto":  # installed as vitrine.proto
        parts = ["proto", *parts[3:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "vitrine." + ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the vitrine modules it imports anywhere in its body (function-level imports count too)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = module_name(path)
            deps = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names if a.name.startswith("vitrine.")}
                elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vitrine"):
                    # `from vitrine.cli import rank` imports the module vitrine.cli.rank
                    deps |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def package_of(module: str) -> str:
    return module.split(".")[1]


def test_every_import_follows_the_layers():
    bad = [f"{m} imports {d}" for m, deps in import_graph().items() for d in deps
           if package_of(d) != package_of(m) and package_of(d) not in ALLOWED[package_of(m)]]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_a_planted_violation():
    """The graph holds real imports (function-level ones too), and a trainer module importing server/ is caught."""
    graph = import_graph()
    assert {"vitrine.cli.serve", "vitrine.cli.train"} <= graph["vitrine.cli.main"]
    assert "vitrine.server.client" in graph["vitrine.cli.search"]  # imported inside cmd_search
    graph["vitrine.trainer.gate"] = graph["vitrine.trainer.gate"] | {"vitrine.server.app"}
    bad = [m for m, deps in graph.items() for d in deps if package_of(d) not in ALLOWED[package_of(m)] | {package_of(m)}]
    assert bad == ["vitrine.trainer.gate"]


@pytest.mark.parametrize("module", ["vitrine.server.client", "vitrine.proto.search_pb2_grpc", "vitrine.cli.main"])
def test_the_client_imports_neither_torch_nor_numpy(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'numpy', 'faiss', 'tantivy') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == ""
