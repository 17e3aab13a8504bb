"""The timing engine reaches other packages through their public interfaces only (issue 23): no private
attribute, module, name or keyword of theirs, no pytest-benchmark module (its public interface is the
`benchmark` fixture, its marker, options and hooks), and on the fixture only what its documentation names.
Checked on the source, by an AST walk; the check is shown to catch the patterns the engine used before.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ("harness/timing.py", "suites/throughput/measuring.py", "suites/bench_throughput.py")
PROJECT = {"harness", "suites", "variants", "tests"}
SELF = {"self", "cls"}
# The `benchmark` fixture as pytest-benchmark documents it: called, `pedantic`, `weave`, `extra_info`,
# and the test's names. Its `stats` (and `stats.stats.data`) are internals.
FIXTURE_API = {"pedantic", "weave", "extra_info", "name", "fullname", "group", "param"}
ATTRIBUTE_BUILTINS = {"getattr", "setattr", "hasattr", "delattr"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _import_uses(module: str, names: list[str], line: int) -> list[str]:
    parts = module.split(".")
    if parts[0] in PROJECT:
        return []
    found = []
    if parts[0] == "pytest_benchmark":
        found.append(f"line {line}: imports {module}: pytest-benchmark's modules are internals")
    if any(is_private(part) for part in parts):
        found.append(f"line {line}: imports {module}: private module")
    found += [f"line {line}: imports {name} from {module}: private" for name in names if is_private(name)]
    return found


def private_uses(source: str) -> list[str]:
    """Every use of another package's internals in `source`, one line each (empty: none)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += _import_uses(alias.name, [], line)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += _import_uses(node.module, [alias.name for alias in node.names], line)
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if is_private(node.attr) and owner not in SELF:
                found.append(f"line {line}: private attribute .{node.attr}")
            if owner == "benchmark" and node.attr not in FIXTURE_API:
                found.append(f"line {line}: benchmark.{node.attr} is not the fixture's public interface")
        elif isinstance(node, ast.keyword) and node.arg and is_private(node.arg):
            found.append(f"line {line}: private keyword {node.arg}=")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ATTRIBUTE_BUILTINS and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and is_private(node.args[1].value)):
            found.append(f"line {line}: {node.func.id}(..., {node.args[1].value!r})")
    return found


@pytest.mark.parametrize("path", ENGINE)
def test_the_timing_engine_uses_public_interfaces_only(path):
    assert private_uses((ROOT / path).read_text()) == []


# What harness/timing.py and suites/throughput/measuring.py did before (commit b12b6bf): each is caught.
OLD_PATTERNS = {
    "a pytest-benchmark module": "from pytest_benchmark.fixture import BenchmarkFixture",
    "a pytest-benchmark module, imported whole": "import pytest_benchmark.utils",
    "a fake pytest node's private field": "node = SimpleNamespace(name=name, _nodeid=name, nodeid=name)",
    "the fixture's stats": "data = benchmark.stats.stats.data",
    "appending into them": "benchmark.stats.stats.update(duration)",
    "a private attribute of a library": "torch.cuda._sleep(10)",
    "a private module": "from torch._dynamo import config",
    "a private name": "from torch.utils.benchmark import _private_helper",
    "a private attribute by name": "getattr(fixture, '_timer')",
}


@pytest.mark.parametrize("source", OLD_PATTERNS.values(), ids=OLD_PATTERNS.keys())
def test_the_check_catches_internals(source):
    assert private_uses(source)


def test_the_check_lets_public_and_own_names_pass():
    source = """
from harness import timing
from harness.timing import ReplayClock
import torch.utils.benchmark
benchmark.pedantic(clock.step, setup=clock.rewind, rounds=3)
benchmark.extra_info.update({"a": 1})
self._cache = {}
x.__name__
"""
    assert private_uses(source) == []
