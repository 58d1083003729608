"""The house's layers, checked on the source: the library imports no door, server/ and trainer/ never import each
other, nothing imports cli/ but cli/, no module import cycle, the gRPC client loads without torch or numpy, the
configuration loads without the gRPC server or the trainers, and nothing finishes a Searcher from outside."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "server", "trainer", "serving", "encoders", "indexer", "ranking", "proto")
LIBRARY = {"encoders", "indexer", "ranking", "serving"}
# Which top-level packages each may import (besides itself). serving/ (what a server serves: its configuration,
# assembly, model pool, tenants) sits above ranking/ and below the doors.
ALLOWED = {
    "encoders": set(),
    "indexer": {"encoders"},
    "ranking": {"encoders", "indexer"},
    "serving": {"encoders", "indexer", "ranking"},
    "proto": set(),
    "server": LIBRARY | {"proto"},
    "trainer": LIBRARY,
    "cli": LIBRARY | {"proto", "server", "trainer"},
}
# Leaves every package may import: they import no Vitrine module themselves (checked below).
NEUTRAL = {"vitrine.serving.schema"}
# Where each door's tests may not reach: no test builds a server through cli/.
SRC_DIRS = ("cli", "server", "trainer", "serving", "encoders", "indexer", "ranking")


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
                    # `from vitrine.cli import gate` imports the module vitrine.cli.gate
                    deps |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
            graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def package_of(module: str) -> str:
    return module.split(".")[1]


def test_every_import_follows_the_layers():
    bad = [f"{m} imports {d}" for m, deps in import_graph().items() for d in deps
           if package_of(d) != package_of(m) and package_of(d) not in ALLOWED[package_of(m)] and d not in NEUTRAL]
    assert not bad, "\n".join(bad)


def test_neutral_modules_import_no_vitrine_module():
    graph = import_graph()
    assert all(not graph[m] for m in NEUTRAL), {m: graph[m] for m in NEUTRAL}


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
    bad = [m for m, deps in graph.items() for d in deps
           if package_of(d) not in ALLOWED[package_of(m)] | {package_of(m)} and d not in NEUTRAL]
    assert bad == ["vitrine.trainer.gate"]


@pytest.mark.parametrize("module", ["vitrine.server.client", "vitrine.proto.search_pb2_grpc", "vitrine.cli.main"])
def test_the_client_imports_neither_torch_nor_numpy(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'numpy', 'faiss', 'tantivy') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == ""


HEAVY_DOORS = ("import sys\n"
               "doors = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc_health', 'grpc_reflection') "
               "and m.count('.') or m.startswith(('vitrine.server', 'vitrine.trainer')))\n"
               "print('loaded:', ','.join(doors))")


@pytest.mark.parametrize("code", [
    "from vitrine.serving.config import load_config\nconfig = load_config({path!r})\nassert config.quota.qps == 5",
    "from vitrine.cli.main import main\ntry:\n    main(['index', '--help'])\nexcept SystemExit:\n    pass",
])
def test_configuration_and_index_help_load_neither_the_grpc_server_nor_the_trainers(code, tmp_path):
    """`vitrine index --help` and reading vitrine.toml import no gRPC health or reflection service, nothing of
    server/ and nothing of trainer/. (`import grpc` itself imports the empty top-level `grpc_health` package, so
    the check is on its modules.)"""
    toml = tmp_path / "vitrine.toml"
    toml.write_text("[server]\nmax_workers = 4\n[gate]\nmin_gain = 0.02\n[quota]\nqps = 5\n")
    script = code.format(path=str(toml)) + "\n" + HEAVY_DOORS
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "loaded:"


SEARCHER_MODULE = ROOT / "ranking" / "pipeline.py"


def searcher_attribute_writes(sources: dict[str, str]) -> list[str]:
    """Every statement outside ranking/pipeline.py that sets an attribute on a searcher: `<x>searcher<y>.attr = v`
    (or `+=`, `del`, `setattr(searcher, ...)`), where the object's name says it is a searcher or an experiment arm."""
    def names_a_searcher(node: ast.expr) -> bool:
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
        return "searcher" in name.lower() or name in ("arm", "arm_b")

    found = []
    for where, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            targets = []
            if isinstance(node, (ast.Assign, ast.Delete)):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                for t in ast.walk(target):
                    if isinstance(t, ast.Attribute) and isinstance(t.ctx, (ast.Store, ast.Del)) and names_a_searcher(t.value):
                        found.append(f"{where}:{t.lineno} sets .{t.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr" and node.args \
                    and names_a_searcher(node.args[0]):
                found.append(f"{where}:{node.lineno} setattr")
    return found


def test_nothing_sets_an_attribute_on_a_searcher_outside_its_module():
    """A served searcher is whole when built (serving/assemble.py's Served record holds backends, pooled models and
    the B arm); no module finishes one from outside."""
    sources = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
               for package in (*SRC_DIRS, "bench") for path in sorted((ROOT / package).rglob("*.py"))
               if path != SEARCHER_MODULE}
    assert searcher_attribute_writes(sources) == []


def test_the_attribute_check_sees_a_planted_write():
    planted = {"x.py": "searcher.backends = {}\narm.reranker = r\nserved.searcher.pool += 1\nsetattr(searcher, 'a', 1)\n"
                       "self.searcher = s\nstate.live = None\n"}
    assert searcher_attribute_writes(planted) == ["x.py:1 sets .backends", "x.py:2 sets .reranker", "x.py:3 sets .pool",
                                                  "x.py:4 setattr"]


def test_no_test_imports_cli_to_build_a_server():
    """Tests of server/, serving/ and the library build what they serve through the library and server/, not cli/."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.parent.name == "cli" or path.name == "test_layers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitrine.cli") \
                    and {a.name for a in node.names} - {"main"}:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import "
                                 f"{', '.join(a.name for a in node.names)}")
    assert offenders == []


MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 450, 80, 8
# Allowed more parameters: the users' keyword API of the client (it builds a Query from them once).
KEYWORD_APIS = {("server/client.py", "search")}


def oversized(sources: dict[str, str]) -> list[str]:
    """Modules over 450 lines, functions over 80 lines, functions over 8 parameters (self/cls not counted; CLI
    handlers `cmd_*`, which take one argparse Namespace, and the keyword APIs above excepted)."""
    found = []
    for where, source in sources.items():
        if source.count("\n") > MAX_MODULE_LINES:
            found.append(f"{where}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
            a = node.args
            bound = bool(a.args) and a.args[0].arg in ("self", "cls")
            n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - bound
            if n > MAX_PARAMETERS and not node.name.startswith("cmd_") and (where, node.name) not in KEYWORD_APIS:
                found.append(f"{where}:{node.lineno} {node.name}: {n} parameters")
    return found


def test_no_room_is_too_big():
    """The library and the doors (not the generated gRPC stubs): modules, functions and parameter lists stay small."""
    sources = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
               for package in SRC_DIRS for path in sorted((ROOT / package).rglob("*.py"))}
    assert oversized(sources) == []


def test_the_size_check_sees_a_big_room():
    many = ", ".join(f"a{n}" for n in range(9))
    long_body = "\n".join(f"    x{n} = {n}" for n in range(80))
    planted = {"x.py": f"def f(self, {many}):\n    pass\n\ndef cmd_x({many}):\n    pass\n\ndef g():\n{long_body}\n"}
    assert oversized(planted) == ["x.py:1 f: 9 parameters", "x.py:7 g: 81 lines"]
