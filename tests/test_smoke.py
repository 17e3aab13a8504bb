"""`nox -s gpu-smoke` (harness.smoke): the plan's order and budgets, a step that runs out of time or fails
is recorded and the next one runs, and the offline wheelhouse's requirement list (scripts/wheelhouse.py)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import costs, registry, smoke

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["install", "imports", "doctor", "tests-smoke", "tests-cuda", "sweep", "sweep-compiled", "fidelity",
         "energy", "report"]


def load_wheelhouse():
    spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the plan ------------------------------------------------------------------------------------

def test_the_gpu_plan_runs_its_steps_in_order_within_eight_minutes(tmp_path):
    plan = smoke.steps("cuda", tmp_path)
    assert [s.name for s in plan] == ORDER
    assert all(s.budget_s > 0 for s in plan)
    assert smoke.estimate_s(plan, "cuda") == smoke.gpu_estimate_s() <= smoke.GPU_LIMIT_S == 480
    assert {s.name for s in plan if s.cuda_only} == {"tests-smoke", "tests-cuda", "energy"}
    assert [s.name for s in smoke.steps("cuda")] == ORDER[1:]  # no wheelhouse, no install


def test_the_cpu_plan_is_the_same_steps_within_three_minutes():
    plan = smoke.steps("cpu")
    assert [s.name for s in plan] == ORDER[1:]
    assert smoke.estimate_s(plan, "cpu") <= smoke.CPU_LIMIT_S == 180
    assert smoke.estimate_s(plan, "cpu") < sum(s.budget_s for s in plan)  # the CUDA steps cost nothing


def test_the_install_is_the_command_the_wheelhouse_prints(tmp_path):
    (tmp_path / "requirements.txt").write_text("einops==0.8.2\nmamba-ssm==2.3.1\n")
    (command,) = smoke.install_commands(tmp_path)
    wheelhouse = load_wheelhouse()
    printed = shlex.split(wheelhouse.install_command(tmp_path, wheelhouse.pyproject()))
    assert list(command[1:]) == printed[1:]  # the same, but for the interpreter
    assert "--no-index" in command and command[-1] == "mamba-ssm==2.3.1"


def test_the_sweeps_cover_every_variant_once_uncompiled_paths_first(tmp_path):
    fast_runs = smoke.sweep_commands("cuda", compiled=False)(tmp_path)
    compiled_runs = smoke.sweep_commands("cuda", compiled=True)(tmp_path)
    # Breadth first: every variant at 1K before any at 4K.
    for runs in (fast_runs, compiled_runs):
        assert [c[c.index("-n") + 1:] for c in runs] == [("1024",), ("4096",), ("16384",)]
    fast, compiled = fast_runs[0], compiled_runs[0]
    named = [[c[i + 1] for i, a in enumerate(c) if a == "-v"] for c in (fast, compiled)]
    assert sorted(named[0] + named[1]) == registry.names()
    per_shape = {n for n in registry.names() if (c := registry.get(n).compile_cost("cuda")) and c.per_shape}
    assert set(named[1]) == per_shape
    assert "vanilla" in named[0] and "mamba2" in named[0] and "longformer" in named[1]
    for command in (fast, compiled):
        text = " ".join(command)
        assert "--dtype bfloat16 --mode fwd --mode fwd_bwd --level kernel --kind sweep" in text
        assert f"--out {tmp_path}" in text


def test_exact_variants_come_first_in_each_sweep_split_by_what_they_declare_they_compile():
    """By the declared compile cost, not by a name: a plugin's FlexAttention path named anything goes with
    the per-shape compilers; an autotuned kernel (once per key) sweeps with the uncompiled paths."""
    per_key = costs.CompileCost("autotune", 1.0, 1.0, ("dtype", "head_dim"), "assumed")
    per_shape = costs.CompileCost("compile", 1.0, 1.0, costs.SHAPE_FIELDS, "measured")
    variants = [SimpleNamespace(name=n, exact=e, compile_cost=lambda d, c=c: c) for n, e, c in [
        ("linear", False, per_key), ("vanilla", True, None), ("my-masked-kernel", True, per_shape),
        ("sinks", False, per_shape), ("flash", True, None)]]
    assert smoke.split_variants(variants) == (["flash", "vanilla", "linear"], ["my-masked-kernel", "sinks"])


# --- running it ----------------------------------------------------------------------------------

def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_a_step_past_its_budget_or_failing_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(smoke, "GRACE_S", 2.0)

    def unlistable(out):
        raise ValueError("the variants cannot be listed")

    plan = [
        smoke.Step("slow", 1.0, (python("print('started', flush=True); import time; time.sleep(60)"),), "x"),
        smoke.Step("broken", 10, (python("print('first'); raise SystemExit('it broke')"),), "x"),
        smoke.Step("gpu", 10, (python("print('never')"),), "x", cuda_only=True),
        smoke.Step("unplanned", 10, unlistable, "x"),
        smoke.Step("fine", 10, (python("print('one')"), python("print('two')")), "x"),
    ]
    outcomes = smoke.run(plan, tmp_path, "cpu", echo=lambda line: None)
    got = {o.name: o for o in outcomes}
    assert [o.name for o in outcomes] == ["slow", "broken", "gpu", "unplanned", "fine"]
    assert got["slow"].status == "timed out" and got["slow"].seconds < 1.0 + smoke.GRACE_S + 5
    assert got["slow"].reason == "past its budget of 1 s; KeyboardInterrupt"  # interrupted, its last line
    assert (got["broken"].status, got["broken"].reason) == ("failed", "exit 1: it broke")
    assert (got["gpu"].status, got["gpu"].reason) == ("skipped", "no CUDA device")
    assert got["unplanned"].status == "failed" and "cannot be listed" in got["unplanned"].reason
    assert (got["fine"].status, got["fine"].reason) == ("ok", "two")  # both commands ran
    record = json.loads((tmp_path / "smoke.json").read_text())
    assert [s["status"] for s in record["steps"]] == ["timed out", "failed", "skipped", "failed", "ok"]
    assert record["gpu_estimate_s"] == smoke.gpu_estimate_s()
    assert (tmp_path / "smoke-logs" / "fine.log").read_text().count("$ ") == 2


def test_a_step_that_ignores_the_interrupt_is_killed_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(smoke, "GRACE_S", 0.5)
    stubborn = python("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                      "print('holding', flush=True); time.sleep(60)")
    plan = [smoke.Step("stubborn", 1.0, (stubborn,), "x")]
    (outcome,) = smoke.run(plan, tmp_path, "cpu", echo=lambda line: None)
    assert outcome.status == "timed out" and outcome.seconds < 10


def test_an_open_ended_step_stopped_at_its_budget_is_cut_not_failed(tmp_path, monkeypatch):
    # Cut whether the interrupt ends it or the kill after the grace does (in CI this test waited out the
    # whole 15 s grace): the grace is not what this test is about
    monkeypatch.setattr(smoke, "GRACE_S", 2.0)
    plan = [smoke.Step("rest", 0.5, (python("import time; time.sleep(60)"),), "x", open_ended=True)]
    (outcome,) = smoke.run(plan, tmp_path, "cpu", echo=lambda line: None)
    assert outcome.status == "cut"
    assert [s.name for s in smoke.steps("cuda") if s.open_ended] == ["tests-cuda", "sweep", "sweep-compiled"]


def test_the_reason_is_the_suites_summary_or_the_last_line_that_is_not_a_rule(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("rows written: ok 3; already done: 0\n┏━━━┓\n┃ a ┃\n└───┘\n")
    assert smoke.last_line(log) == "rows written: ok 3; already done: 0"
    log.write_text("Traceback\nValueError: bad\n└───┘\n\n")
    assert smoke.last_line(log) == "ValueError: bad"


def test_smoke_json_lists_the_steps_not_run_yet(tmp_path):
    plan = [smoke.Step("a", 5, (python("pass"),), "x"), smoke.Step("b", 5, (python("pass"),), "x")]
    smoke.write_record(tmp_path, "cpu", plan, [smoke.Outcome("a", "ok", 0.1, 5)])
    record = json.loads((tmp_path / "smoke.json").read_text())
    assert [(s["name"], s["status"]) for s in record["steps"]] == [("a", "ok"), ("b", "not run")]


def test_junit_counts(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite tests="7" failures="1" errors="1" skipped="2"/></testsuites>')
    assert smoke.junit_counts(xml) == {"passed": 3, "failed": 1, "errors": 1, "skipped": 2}
    assert smoke.junit_counts(tmp_path / "none.xml") == {}


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "harness.smoke", "--wheelhouse", str(tmp_path / "nope")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "is not a directory" in done.stderr.strip().splitlines()[-1]


# --- the wheelhouse's requirement list -----------------------------------------------------------

def test_the_wheelhouse_holds_what_the_project_needs_beyond_the_image():
    wheelhouse = load_wheelhouse()
    project = wheelhouse.pyproject()
    wanted = wheelhouse.requirements(project)
    names = {wheelhouse.name_of(r) for r in wanted}
    extras = project["project"]["optional-dependencies"]
    for requirement in (*project["project"]["dependencies"], *extras["gpu"], *extras["dev"]):
        assert requirement in wanted
    assert {"pydantic", "fla-core", "xformers", "setuptools"} <= names and "causal-conv1d" not in names
    assert wheelhouse.source_built(project) == next(r for r in extras["mamba"] if r.startswith("mamba-ssm=="))
    assert "mamba-ssm" not in names  # built from source, not downloaded
    needed = {"pydantic": "2.14.4", "torch": "2.11.0", "nvidia-cudnn-cu13": "9.19.0.56", "pandas": "3.1.1",
              "python-dateutil": "4.0.0", "mamba-ssm": "2.3.1", "einops": "0.8.2", "setuptools": "81.0.0"}
    provided = {"torch", "nvidia-cudnn-cu13", "triton", "setuptools", *wheelhouse.IMAGE}
    assert wheelhouse.to_download(needed, provided, project) == [  # setuptools: the editable build's backend
        "einops==0.8.2", "pydantic==2.14.4", "python-dateutil==4.0.0", "setuptools==81.0.0"]


def test_the_wheelhouse_targets_every_older_manylinux_too():
    wheelhouse = load_wheelhouse()
    tags = wheelhouse.platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= set(tags)
    options = wheelhouse.target_options("3.12", "manylinux_2_28_x86_64")
    assert options[:2] == ["--only-binary", ":all:"] and "cp312" in options
    assert wheelhouse.platforms("win_amd64") == ["win_amd64"]


def test_the_gpu_extras_are_pinned_to_tested_versions():
    extras = load_wheelhouse().pyproject()["project"]["optional-dependencies"]
    pinned = {r.split("==")[0]: r.split("==")[1] for r in (*extras["gpu"], *extras["mamba"]) if "==" in r}
    assert set(pinned) == {"xformers", "fla-core", "mamba-ssm", "causal-conv1d"}


def test_the_smoke_imports_only_the_standard_library_at_load():
    """It runs before the install it performs (no pydantic, no torch yet)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import harness.smoke; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pydantic', 'numpy')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_smoke_marked_cuda_tests_touch_every_variant():
    """nox -s gpu-smoke runs `-m "cuda and smoke"` first: one test per fast path. A variant is touched
    when a smoke test's id names it, or the smoke tests of its own file (test_<name>.py) run; the
    baseline is the reference the others are compared with there."""
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-m", "cuda and smoke", *files], cwd=ROOT, capture_output=True, text=True)
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert done.returncode == 0 and ids, done.stdout[-2000:]

    def touches(test_id: str, name: str) -> bool:
        own_file = test_id.startswith(f"tests/test_{name.replace('-', '_')}.py::")
        return own_file or test_id.endswith((f"-{name}]", f"[{name}]"))

    untouched = [v.name for v in registry.all_variants()
                 if not v.baseline and not any(touches(i, v.name) for i in ids)]
    assert untouched == []
    assert len(ids) < 40  # a first pass, not the whole CUDA suite
