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

from harness import contract, plugins, registry
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
    assert plugins.suite("throughput").module == "suites.throughput.suite"
    with pytest.raises(ValueError, match="unknown suite 'nope'; choose one of: .*throughput"):
        plugins.suite("nope")


def test_rows_record_where_the_variant_comes_from():
    from suites.throughput.planning import plan

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


# Suites that do not keep the protocol (harness.suite): one lacks members, one declares a bad timeout.
BROKEN_SUITES = {
    "half_suite": """
        def plan(profile, device, variants=None, seq_lens=None, dtypes=None):
            return []
    """,
    "bad_timeout_suite": """
        TIMEOUT_S = "soon"
        OPTIONS = ()
        plan = run_case = case_cost = print
    """,
}


@pytest.fixture(scope="module")
def broken_plugins(tmp_path_factory) -> dict:
    """A directory holding three plugin modules, two suites and a dist-info declaring them; env for a
    subprocess."""
    site = tmp_path_factory.mktemp("site")
    for name, code in {**BROKEN_MODULES, **BROKEN_SUITES}.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))
    info = site / "broken_plugins-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        "[attnbench.variants]\n" + "".join(f"{n} = {n}\n" for n in BROKEN_MODULES)
        + "[attnbench.suites]\n" + "".join(f"{n.replace('_', '-')} = {n}\n" for n in BROKEN_SUITES))
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
    assert ("broken-plugins 0.3: entry point 'half-suite': SuiteError: half_suite lacks run_case, TIMEOUT_S, "
            "case_cost, OPTIONS (a suite declares plan, run_case, TIMEOUT_S, case_cost, OPTIONS") in out
    assert ("broken-plugins 0.3: entry point 'bad-timeout-suite': SuiteError: bad_timeout_suite: malformed "
            "TIMEOUT_S (a positive number of seconds)") in out
    assert "'throughput'" not in out  # the suites that keep the protocol are no problem


@pytest.mark.slow
def test_run_fails_only_when_asking_for_what_is_broken(broken_plugins, tmp_path):
    common = ["run", "--suite", "throughput", "--device", "cpu", "--no-progress", "-n", "128"]
    asked = attnbench(*common, "-v", "vanilla", "--out", str(tmp_path / "a"), env=broken_plugins)
    assert asked.returncode == 2
    assert asked.stderr.strip().count("\n") == 0
    assert "'vanilla' is declared by both" in asked.stderr and "uninstall one" in asked.stderr
    unknown = attnbench(*common, "-v", "half-declared", "--out", str(tmp_path / "b"), env=broken_plugins)
    assert unknown.returncode == 2 and "missing_field" in unknown.stderr
    one_case = ["-v", "linear", "--mode", "fwd", "--level", "kernel"]  # it runs beside the broken plugins
    fine = attnbench(*common, *one_case, "--out", str(tmp_path / "c"), env=broken_plugins)
    assert fine.returncode == 0, fine.stderr
    assert "rows written: ok 1;" in fine.stdout, fine.stdout[-2000:]
    half = attnbench("run", "--suite", "half-suite", "--device", "cpu", "--out", str(tmp_path / "d"),
                     env=broken_plugins)
    assert half.returncode == 2 and half.stderr.strip().count("\n") == 0, half.stderr
    assert "suite 'half-suite' from broken-plugins 0.3 failed to load: SuiteError: half_suite lacks" in (
        half.stderr)


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
    # Every mode and level of the throughput plan at its shortest length; the accuracy suite's exactness
    # checks (N 128, and 1024 for `long`) and its MQAR training at N 8, stopped by a low criterion (here at
    # its first validation, step 50: over 0.05 there); unmet, it would train to the quick profile's 10 s
    # budget as before, which showed nothing more.
    for suite, options in [("throughput", ["-n", "128"]),
                           ("accuracy", ["-n", "8", "-n", "128", "-n", "1024", "--criterion", "0.01"]),
                           ("long-range", ["-n", "16"])]:
        result = attnbench("run", "--suite", suite, *common, *options, env=env)
        assert result.returncode == 0, (suite, result.stderr[-2000:])
    report = attnbench("report", str(out), "--fail-on-incorrect", env=env)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (out / "report" / "report.html").exists()

    rows = pd.concat(pd.read_parquet(p) for p in (out / "records").glob("*.parquet"))
    assert set(rows.suite) == {"throughput", "accuracy", "long-range"}
    assert set(rows.variant) == {"sigmoid"} and set(rows.variant_package) == {"attnbench-sigmoid-example"}
    failed = rows[~rows.status.isin(["ok", "unsupported"])]
    assert failed.empty, failed[["suite", "status", "reason"]].to_string()
    checked = rows[rows.task == "exactness"] if "task" in rows else rows.iloc[:0]
    assert set(checked.input_kind) == set(contract.ATTENTION_CHECKS)
    assert checked[checked.status == "ok"].within_tolerance.astype(bool).all()  # the report's gate passed
    unsupported = checked[checked.status == "unsupported"]
    grouped = unsupported.kv_heads.notna() if "kv_heads" in unsupported else unsupported.status.isna()
    # The plugin declares no grouped KV heads: those checks are unsupported rows saying so.
    assert unsupported[grouped].reason.str.contains("grouped KV heads not declared").all()
    no_decoding = unsupported[~grouped]  # the plugin declares why (its bias needs N)
    assert set(no_decoding.input_kind) <= {"decode"} and no_decoding.reason.str.contains("-log\\(n\\)").all()
    exact = checked[(checked.dtype == "float64") & checked.impl_err.notna()]
    assert not exact.empty and (exact.impl_err < 1e-10).all()  # the chunked path equals its reference
    tp = rows[(rows.suite == "throughput") & (rows.status == "ok") & (rows.level == "kernel")]
    assert tp.flops.notna().all() and (tp.flops > 0).all()
    assert json.loads((out / "environment.json").read_text())["torch"]


# --- the example plugin's own cost and memory models, through the registry's hooks ---------------------

@pytest.fixture
def example_registered(monkeypatch):
    """The example module imported here, its variant registered for this test only (a copy of the
    registry is restored afterwards), as its entry point would register it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = importlib.util.spec_from_file_location("attnbench_sigmoid", EXAMPLE / "attnbench_sigmoid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_plugins_estimate_comes_from_its_hook(example_registered, monkeypatch):
    from harness import costs
    from suites import accuracy, estimate

    v = registry.get("sigmoid")
    assert v.cost is example_registered.sigmoid_cost and v.default_models == ()
    calls = []

    def spy(*args, **params):
        calls.append(args)
        return example_registered.sigmoid_cost(*args, **params)

    monkeypatch.setattr(v, "cost", spy)
    case = next(c for c in accuracy.plan("quick", "cpu", variants=["sigmoid"]) if c.task != "exactness")
    tokens, n = case.batch_size * case.train_seq_len, case.train_seq_len
    step = estimate.step_seconds(case, "cpu", tokens, n)
    assert calls == [(case.d_model, case.n_layers, case.n_heads, n)]
    # Every pair scored: twice the causal half the default (causal softmax attention) charges.
    block = 6 * case.n_layers * 12 * case.d_model**2
    charged = lambda mixer_flops: (tokens * (block + mixer_flops) / estimate.MATMUL_FLOPS["cpu"]  # noqa: E731
                                   + estimate.STEP_OVERHEAD_S["cpu"])
    every_pair = costs.attention_flops(case.d_model, case.n_layers, 2 * n)
    assert step == pytest.approx(charged(every_pair), rel=1e-12)
    default = costs.default_cost(case.d_model, case.n_layers, case.n_heads, n).flops
    assert step > charged(default) * (1 + 1e-9)
    assert estimate.case_cost(case) > 0 and len(calls) > 1


@pytest.mark.slow  # the plugin installed, and the command in an interpreter of its own
def test_find_max_n_on_the_example_plugin_carries_its_prediction(example_installed, example_registered,
                                                                 tmp_path):
    """Through the CLI, as a user would: the rows carry the plugin's own model (not the default), and the
    lengths that ran and failed sit either side of its predicted frontier."""
    from harness import costs, store
    from suites import frontier

    out, cap = tmp_path / "frontier", 2**28  # --memory-gb 0.25
    result = attnbench("run", "--suite", "throughput", "--device", "cpu", "--find-max-n", "--memory-gb",
                       "0.25", "-n", "1024", "-n", "16384", "-v", "sigmoid", "--out", str(out),
                       env=example_installed)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = store.load(out).sort_values("seq_len")
    assert list(rows.seq_len) == [1024, 16384] and list(rows.status) == ["ok", "oom"]
    assert set(rows.default_models) == {""} and set(rows.variant_package) == {"attnbench-sigmoid-example"}
    ran = rows.iloc[0]  # a probe that ran records the model's peak for its call
    call = costs.KernelCall("cpu", "sigmoid", registry.as_dtype(ran["dtype"]), 1, ran.n_heads, ran.seq_len,
                            ran.head_dim)
    modelled = example_registered.sigmoid_peak_bytes(call)
    assert ran.predicted_peak_bytes == int(modelled + frontier.RUNTIME_BYTES)
    assert ran.predicted_peak_bytes < costs.dense_softmax_bytes(call)  # not the default's model
    predicted = frontier.predicted_max_n("sigmoid", "cpu", "float32", cap)
    assert set(rows.predicted_max_n) == {predicted} and 1024 < predicted < 16384
    assert f"sigmoid: largest N 1024 (predicted {predicted})" in result.stdout


MEASURE_PEAK = """
import json, sys
from suites import frontier
from suites.throughput import planning as tp
n, heads, dtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
case = tp.Case(variant="sigmoid", device="cpu", dtype=dtype, mode="fwd", level="kernel", seq_len=n, batch=1,
               total_tokens=n, n_heads=heads, head_dim=64, budget_ms=1, warmup_ms=0, kind="frontier",
               memory_cap_mb=4096)
print(json.dumps(frontier.probe_frontier(case)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("n, heads, dtype", [(256, 512, "float32"), (1024, 128, "bfloat16")])
def test_the_example_plugins_memory_model_predicts_the_measured_peak(example_installed, n, heads, dtype):
    """Its model against the resident peak of one call in a fresh process, within 25% as the built-in
    models are held (tests/test_throughput.py); shapes where its buffers dominate and the call is short."""
    from harness import memory

    if not memory.reset_peaks("cpu"):
        pytest.skip("no resident-peak measurement here (/proc/self/clear_refs)")
    proc = subprocess.run([sys.executable, "-c", MEASURE_PEAK, str(n), str(heads), dtype], cwd=ROOT,
                          env=example_installed, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["mem_rss_peak_bytes"] > 400 * memory.MIB
    assert measured["predicted_peak_bytes"] == pytest.approx(measured["mem_rss_peak_bytes"], rel=0.25)
