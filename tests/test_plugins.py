"""Variants and suites arrive as plugins (entry points); the harness core never names them."""

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from harness import plugins, registry
from harness.registry import Support, Variant

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "plugin_example"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, function-level (late) imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_harness_imports_neither_variants_nor_suites():
    offenders = {str(p.relative_to(ROOT)): sorted(imported_modules(p) & {"variants", "suites"})
                 for p in sorted((ROOT / "harness").rglob("*.py"))}
    assert {p: m for p, m in offenders.items() if m} == {}


def test_the_walk_sees_late_imports(tmp_path):
    file = tmp_path / "m.py"
    file.write_text("def f():\n    from suites.throughput import plan\n    import variants.mamba\n")
    assert imported_modules(file) == {"suites", "variants"}


def test_own_families_and_suites_come_through_entry_points():
    assert registry.get("vanilla").source.package == "attnbench"
    assert {"throughput", "accuracy", "long-range"} <= set(plugins.suite_names())
    assert plugins.suite("throughput").__name__ == "suites.throughput"
    with pytest.raises(ValueError, match="unknown suite 'nope'; choose one of: .*throughput"):
        plugins.suite("nope")


def test_rows_record_where_the_variant_comes_from():
    from suites.throughput import plan

    row = plan("quick", "cpu", variants=["vanilla"])[0].flat()
    assert row["variant_package"] == "attnbench" and row["variant_version"]


@pytest.mark.parametrize("fields, message", [
    (dict(name="x", family="", exact=True), "needs a family name"),
    (dict(name="x", family="f", exact="yes"), "exact must be True or False"),
    (dict(name="x", family="f", exact=True, support=None), "support must be"),
    (dict(name="x", family="f", exact=True, support=Support(), mixer_factory=None), "neither an attention"),
])
def test_a_variant_missing_a_required_field_is_refused(fields, message):
    fields = {"support": Support(), "mixer_factory": object, **fields}
    with pytest.raises(TypeError, match=message):
        Variant(**fields)


# --- broken plugins, seen by a fresh process through a fake installed distribution ----------------------

BROKEN_MODULES = {
    "raises_on_import": "raise RuntimeError('cannot find libfoo.so')\n",
    "duplicate_name": """
        from harness.attention import softmax_attention
        from harness.registry import attention_variant

        @attention_variant("vanilla", family="vanilla", exact=True)
        def vanilla(q, k, v, causal=False):
            return softmax_attention(q, k, v)

        @attention_variant("sound-one", family="sound", exact=True)
        def sound(q, k, v, causal=False):
            return softmax_attention(q, k, v)
    """,
    "missing_field": """
        from harness.registry import attention_variant

        @attention_variant("half-declared", family="x")  # no `exact`
        def half(q, k, v, causal=False):
            return q
    """,
}


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory) -> dict:
    """A directory holding three plugin modules and a dist-info declaring them; env for a subprocess."""
    site = tmp_path_factory.mktemp("site")
    for name, code in BROKEN_MODULES.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))
    info = site / "broken_plugins-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        "[attnbench.variants]\n" + "".join(f"{n} = {n}\n" for n in BROKEN_MODULES))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "COLUMNS": "250"}


def attnbench(*args, env, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_list_reports_each_broken_plugin_in_one_line_and_keeps_the_rest(broken_plugins):
    result = attnbench("list", env=broken_plugins)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    assert "broken-plugins 0.3: entry point 'raises_on_import': RuntimeError: cannot find libfoo.so" in out
    assert "broken-plugins 0.3: entry point 'missing_field': TypeError:" in out
    assert ("broken-plugins 0.3: variant 'vanilla': name declared by several packages (attnbench 0.1.0, "
            "broken-plugins 0.3)") in out
    assert "sound-one" in out and "performer" in out  # a broken neighbour does not take the rest down


@pytest.mark.slow
def test_run_fails_only_when_asking_for_what_is_broken(broken_plugins, tmp_path):
    common = ["run", "--suite", "throughput", "--device", "cpu", "--no-progress", "-n", "128"]
    asked = attnbench(*common, "-v", "vanilla", "--out", str(tmp_path / "a"), env=broken_plugins)
    assert asked.returncode == 2
    assert asked.stderr.strip().count("\n") == 0
    assert "'vanilla' is declared by both" in asked.stderr and "uninstall one" in asked.stderr
    unknown = attnbench(*common, "-v", "half-declared", "--out", str(tmp_path / "b"), env=broken_plugins)
    assert unknown.returncode == 2 and "missing_field" in unknown.stderr
    fine = attnbench(*common, "-v", "linear", "--out", str(tmp_path / "c"), env=broken_plugins)
    assert fine.returncode == 0, fine.stderr


# --- the example plugin, installed as a user would, through every suite and the report -----------------

@pytest.fixture(scope="module")
def example_installed(tmp_path_factory) -> dict:
    """tests/plugin_example pip-installed into a directory of its own (the project stays untouched)."""
    target, source = tmp_path_factory.mktemp("example-site"), tmp_path_factory.mktemp("example-src")
    shutil.copytree(EXAMPLE, source, dirs_exist_ok=True)  # the build leaves files where it runs
    # The environment's own setuptools builds it where it has one (no download); else pip fetches one.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}


@pytest.mark.slow
def test_the_example_plugin_runs_through_every_suite_and_the_report(example_installed, tmp_path):
    env, out = example_installed, tmp_path / "run"
    listed = attnbench("list", env={**env, "COLUMNS": "250"})
    assert "sigmoid" in listed.stdout and "attnbench-sigmoid-example 0.1.0" in listed.stdout
    common = ["-v", "sigmoid", "--device", "cpu", "--profile", "quick", "--no-progress", "--out", str(out)]
    for suite, lengths in [("throughput", []), ("accuracy", ["-n", "8", "-n", "128"]),
                           ("long-range", ["-n", "16"])]:
        result = attnbench("run", "--suite", suite, *common, *lengths, env=env)
        assert result.returncode == 0, (suite, result.stderr[-2000:])
    report = attnbench("report", str(out), env=env)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (out / "report" / "report.html").exists()

    rows = pd.concat(pd.read_parquet(p) for p in (out / "records").glob("*.parquet"))
    assert set(rows.suite) == {"throughput", "accuracy", "long-range"}
    assert set(rows.variant) == {"sigmoid"} and set(rows.variant_package) == {"attnbench-sigmoid-example"}
    failed = rows[~rows.status.isin(["ok", "unsupported"])]
    assert failed.empty, failed[["suite", "status", "reason"]].to_string()
    exact = rows[(rows.task == "exactness") & (rows.dtype == "float64")] if "task" in rows else rows.iloc[:0]
    assert not exact.empty and (exact.impl_err < 1e-10).all()  # the chunked path equals its reference
    tp = rows[(rows.suite == "throughput") & (rows.status == "ok") & (rows.level == "kernel")]
    assert tp.flops.notna().all() and (tp.flops > 0).all()
    assert json.loads((out / "environment.json").read_text())["torch"]
