"""No import cycle among the project's modules, function-level imports included; the modules that used
to import each other load in either order."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "suites", "variants")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports anywhere in it: `from a import b` is a.b where that is a module,
    else a (an import of a package's name runs only its __init__)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
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
            group = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                group.append(w)
            on_stack.discard(v)
            if group:
                groups.append(sorted([v, *group]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_walk_finds_a_cycle_through_a_late_import(tmp_path):
    (tmp_path / "a.py").write_text("from pkg import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.a import x\n")
    known = {"pkg.a", "pkg.b"}
    graph = {f"pkg.{n}": imports_of(f"pkg.{n}", tmp_path / f"{n}.py", known) for n in "ab"}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}} and cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle_among_the_project_s_modules():
    modules = project_modules()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    assert graph["suites.frontier"] >= {"suites.throughput.planning", "suites.throughput.workloads"}
    assert cycles(graph) == []


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [("suites.frontier", "suites.throughput.suite"),
                                           ("suites.throughput.suite", "suites.frontier"),
                                           ("suites.findings", "suites.accuracy"),
                                           ("suites.accuracy", "suites.findings")])
def test_modules_that_imported_each_other_load_in_either_order(first, second):
    code = f"import {first}, {second}"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
