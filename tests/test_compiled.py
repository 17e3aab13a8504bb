"""The compiled series (`--compile`, docs/compile.md): the `compiled` axis of the plans, compile time kept
out of the timed rounds, eager against compiled within 1e-5, a variant that cannot compile recorded
unsupported with its reason, the probe of whether torch can compile at all, and the report's chart.

Most tests compile with dynamo alone (`gm.forward` as the backend: the traced graph runs as traced) or a
fake backend; the `slow` ones build real inductor kernels with the C++ compiler."""

import dataclasses
import math
import time

import pandas as pd
import pytest
import torch

from harness import compiling, registry, runner
from harness.context import RunContext
from harness.report import charts, data
from suites import accuracy, exactness, grids
from suites.throughput import planning
from tests import test_report_fixtures as fx
from tests.test_throughput import CONTEXT, SUITE, case

ACCURACY = "suites.accuracy"


def traced_only(gm, example_inputs):
    """A backend that runs dynamo's graph as traced: compiles in a second, computes what eager does."""
    return gm.forward


@pytest.fixture
def dynamo_backend(monkeypatch):
    """Every Compiled built in the test compiles with `traced_only` in place of inductor."""
    monkeypatch.setattr(compiling, "_inductor", traced_only)
    yield
    torch._dynamo.reset()


def compiled_check(variant: str, n: int = 32, **fields) -> exactness.ExactnessCase:
    return exactness.ExactnessCase(variant=variant, device="cpu", dtype="float32", input_kind="random",
                                   seq_len=n, head_dim=16, compiled=True, **fields)


# --- the plans ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile", ["quick", "standard"])
def test_compile_adds_the_grids_compiled_sweeps_and_keeps_every_eager_case(profile):
    eager = planning.plan(profile, "cpu")
    both = planning.plan(profile, "cpu", compiled=True)
    assert not any(c.compiled for c in eager)
    assert [c.case_id for c in both if not c.compiled] == [c.case_id for c in eager]
    added = [c for c in both if c.compiled]
    sweeps = planning.THROUGHPUT_GRIDS["cpu", profile].compiled
    assert {(c.level, c.mode, c.seq_len) for c in added} == {
        (s.level, m, n) for s in sweeps for m in s.modes for n in s.seq_lens}
    assert {c.variant for c in added} >= {"vanilla", "linear", "flash-sdpa", "mamba"}
    # each compiled case is its eager twin's configuration, an id of its own
    twins = {c.model_copy(update={"compiled": False}).case_id for c in added}
    assert twins <= {c.case_id for c in eager}
    assert not twins & {c.case_id for c in added}


def test_a_grid_without_declared_compiled_sweeps_compiles_every_sweep():
    grid = planning.THROUGHPUT_GRIDS["cuda", "full"]
    assert grid.compiled is None and grid.compiled_sweeps() == grid.sweeps


def test_the_eager_case_keeps_the_id_it_had_before_the_field():
    plain = case()
    assert "compiled" not in plain.identity()
    assert case(compiled=True).case_id != plain.case_id
    assert "compiled" in case(compiled=True).describe() and plain.slug() + "-compiled" == case(
        compiled=True).slug()


def test_the_accuracy_suite_plans_a_compiled_check_per_variant_at_the_grids_lengths():
    eager = accuracy.plan("quick", "cpu", seeds=0)
    both = accuracy.plan("quick", "cpu", seeds=0, compiled=True)
    added = [c for c in both if getattr(c, "compiled", False)]
    assert [c.case_id for c in both if not getattr(c, "compiled", False)] == [c.case_id for c in eager]
    assert sorted(c.variant for c in added) == sorted(registry.names())
    assert {(c.dtype, c.input_kind, c.seq_len, c.causal) for c in added} == {
        ("float32", "random", n, True) for n in grids.EXACTNESS["quick"].compiled_lens}


def test_compiled_cases_are_charged_torch_compile_once_per_shape_unless_declared_uncompilable(monkeypatch):
    cases = [c for c in planning.plan("quick", "cpu", variants=["vanilla", "linear"], compiled=True)]
    compiled = [c for c in cases if c.compiled]
    bill = planning.estimate(compiled)
    per_call = registry.get("vanilla").compile_cost("cpu", compiled=True).forward_s
    assert bill.compilations == len(compiled) and bill.compile_s == pytest.approx(per_call * len(compiled))
    assert planning.estimate([c for c in cases if not c.compiled]).compile_s == 0  # eager on the CPU
    v = registry.get("linear")
    monkeypatch.setattr(v, "support", dataclasses.replace(v.support, torch_compile="a custom op"))
    assert planning.estimate(compiled).compilations == len([c for c in compiled if c.variant == "vanilla"])


# --- compile time apart from the timed rounds ---------------------------------------------------------

class FakeClock:
    """time.perf_counter, pushed on by an hour whenever the fake backend compiles a graph."""

    HOUR = 3600.0
    __name__ = "perf_counter"  # rows name their timer

    def __init__(self):
        self.real, self.offset, self.compiles = time.perf_counter, 0.0, 0

    def __call__(self) -> float:
        return self.real() + self.offset

    def backend(self, gm, example_inputs):
        self.offset += self.HOUR
        self.compiles += 1
        return gm.forward


@pytest.mark.parametrize("fields", [dict(), dict(mode="fwd_bwd"), dict(level="layer"),
                                    dict(mode="decode", level="layer")], ids=["kernel", "fwd_bwd", "layer",
                                                                                "decode"])
def test_compile_time_is_recorded_apart_and_in_none_of_the_timed_rounds(monkeypatch, dynamo_backend,
                                                                           fields):
    clock = FakeClock()
    monkeypatch.setattr(compiling, "_inductor", clock.backend)
    monkeypatch.setattr(time, "perf_counter", clock)
    status, reason, metrics = runner.execute(SUITE, case(compiled=True, **fields), CONTEXT)
    assert status == "ok", reason
    assert clock.compiles >= 1
    # every compilation happened in the compiling call, before any timed round
    assert metrics["compile_s"] >= clock.compiles * FakeClock.HOUR
    assert metrics["latency_ms"] < FakeClock.HOUR * 1e3 and metrics["latency_ms_p80"] < FakeClock.HOUR * 1e3
    assert metrics["eager_fallback"] is False  # the timed rounds ran the compiled graph


def test_an_eager_case_compiles_nothing_and_has_no_compile_time():
    status, _, metrics = runner.execute(SUITE, case(), CONTEXT)
    assert status == "ok" and metrics["compile_s"] is None and metrics["eager_fallback"] is None


# --- eager against compiled ---------------------------------------------------------------------------

def test_compiled_equal_to_eager_is_within_the_tolerance(dynamo_backend):
    status, reason, row = runner.execute(ACCURACY, compiled_check("vanilla"), RunContext())
    assert status == "ok", reason
    assert row["reference"] == "eager" and row["tolerance"] == exactness.COMPILED_TOLERANCE == 1e-5
    assert row["within_tolerance"] is True and row["checked_err"] <= 1e-5
    assert row["compile_s"] > 0 and "against eager" in row["check_detail"]


def off_by(scale: float):
    """A backend whose graph's outputs are off by a relative `scale`: a compiler that is wrong."""
    def backend(gm, example_inputs):
        def run(*args):
            return tuple(t * (1 + scale) if torch.is_tensor(t) else t for t in gm.forward(*args))
        return run
    return backend


@pytest.mark.parametrize("variant", ["vanilla", "linear"])
def test_a_compiled_output_off_by_more_than_the_tolerance_fails_the_check(monkeypatch, dynamo_backend,
                                                                           variant):
    monkeypatch.setattr(compiling, "_inductor", off_by(1e-4))
    status, reason, row = runner.execute(ACCURACY, compiled_check(variant), RunContext())
    assert status == "ok", reason
    assert row["within_tolerance"] is False and row["checked_err"] == pytest.approx(1e-4, rel=1e-3)
    assert "> tolerance 1e-05" in row["check_detail"]


def test_a_compiled_output_off_by_less_than_the_tolerance_passes(monkeypatch, dynamo_backend):
    monkeypatch.setattr(compiling, "_inductor", off_by(1e-6))
    _, _, row = runner.execute(ACCURACY, compiled_check("vanilla"), RunContext())
    assert row["within_tolerance"] is True and row["checked_err"] == pytest.approx(1e-6, rel=0.1)  # fp32


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vanilla", "linear", "flash-sdpa"])
def test_inductor_output_equals_eager_within_1e_5(variant):
    """Real inductor kernels, built by the C++ compiler (tens of seconds each on a busy 2-core CPU)."""
    try:
        status, reason, row = runner.execute(ACCURACY, compiled_check(variant, n=64), RunContext())
    finally:
        torch._dynamo.reset()
    assert status == "ok", reason
    assert row["within_tolerance"] is True and row["checked_err"] <= 1e-5, row["check_detail"]


@pytest.mark.slow
def test_an_inductor_compiled_throughput_case_runs_its_compiled_graph():
    try:
        status, reason, metrics = runner.execute(SUITE, case(variant="linear", seq_len=64, compiled=True),
                                                 CONTEXT)
    finally:
        torch._dynamo.reset()
    assert status == "ok", reason
    assert metrics["compile_s"] > 0 and metrics["eager_fallback"] is False


# --- a variant that cannot compile ---------------------------------------------------------------------

def declare_uncompilable(monkeypatch, name: str, reason: str):
    v = registry.get(name)
    monkeypatch.setattr(v, "support", dataclasses.replace(v.support, torch_compile=reason))


@pytest.mark.parametrize("which", ["throughput", "exactness"])
def test_a_variant_declared_uncompilable_is_unsupported_with_its_reason(monkeypatch, which):
    declare_uncompilable(monkeypatch, "vanilla", "calls a CUDA extension dynamo cannot trace")
    suite, checked = ((SUITE, case(compiled=True)) if which == "throughput"
                      else (ACCURACY, compiled_check("vanilla")))
    status, reason, _ = runner.execute(suite, checked, RunContext())
    assert (status, reason) == ("unsupported", "torch.compile: calls a CUDA extension dynamo cannot trace")
    assert runner.execute(SUITE, case(), CONTEXT)[0] == "ok"  # its eager series still runs


def failing_backend(gm, example_inputs):
    raise RuntimeError("C++ compile error: no such instruction 'vfmadd'\nthe whole log follows")


@pytest.mark.parametrize("which", ["throughput", "exactness"])
def test_a_variant_that_fails_to_compile_is_unsupported_with_the_exceptions_first_line(
        monkeypatch, dynamo_backend, which):
    monkeypatch.setattr(compiling, "_inductor", failing_backend)
    suite, checked = ((SUITE, case(compiled=True)) if which == "throughput"
                      else (ACCURACY, compiled_check("vanilla")))
    status, reason, metrics = runner.execute(suite, checked, RunContext())
    assert status == "unsupported" and metrics == {}
    assert reason == "torch.compile failed: RuntimeError: C++ compile error: no such instruction 'vfmadd'"


def test_a_call_dynamo_leaves_eager_is_unsupported_not_timed_as_compiled(monkeypatch, dynamo_backend):
    v = registry.get("vanilla")
    eager_only = torch._dynamo.disable(v.attention_fn)  # dynamo skips it: no graph to compile
    monkeypatch.setattr(v, "attention_fn", eager_only)
    status, reason, _ = runner.execute(SUITE, case(compiled=True), CONTEXT)
    assert status == "unsupported" and "compiled no graph" in reason


def test_the_compiling_call_keeps_its_own_unsupported_and_out_of_memory(dynamo_backend):
    def raising(error):
        def call():
            raise error
        return call

    compiled = compiling.Compiled(torch.sin)
    with pytest.raises(registry.Unsupported, match="window larger than N"):
        compiling.compiling_call(raising(registry.Unsupported("window larger than N")), compiled)
    with pytest.raises(torch.OutOfMemoryError):
        compiling.compiling_call(raising(torch.OutOfMemoryError("CUDA out of memory")), compiled)


# --- whether torch can compile at all ------------------------------------------------------------------

@pytest.fixture
def fresh_probe():
    compiling.unavailable_reason.cache_clear()
    yield
    compiling.unavailable_reason.cache_clear()


def cxx(compiler: str):
    """Inductor's C++ compiler set to `compiler` for a while (its own config patch)."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch({"cpp.cxx": (compiler,)})


def test_a_missing_cpp_compiler_is_the_probes_reason(fresh_probe):
    with cxx("/nonexistent/bin/c++"):
        reason = compiling.unavailable_reason("cpu")
    assert reason.startswith("--compile: torch cannot compile on cpu: inductor finds no C++ compiler")


def test_a_compiler_that_cannot_build_is_the_probes_reason(fresh_probe, tmp_path):
    broken = tmp_path / "c++"
    broken.write_text('#!/bin/sh\n[ "$1" = --version ] && exit 0\necho "fatal: cannot exec cc1plus" >&2\n'
                      "exit 1\n")
    broken.chmod(0o755)
    with cxx(str(broken)):
        reason = compiling.unavailable_reason("cpu")
    assert "cannot build a file (fatal: cannot exec cc1plus)" in reason


def test_a_torch_without_dynamo_is_the_probes_reason(monkeypatch, fresh_probe):
    import torch._dynamo.eval_frame as eval_frame

    def unsupported():
        raise RuntimeError("Python 3.15+ not yet supported for torch.compile")

    monkeypatch.setattr(eval_frame, "check_if_dynamo_supported", unsupported)
    reason = compiling.unavailable_reason("cpu")
    assert "cannot run dynamo here (RuntimeError: Python 3.15+ not yet supported" in reason


def test_the_probe_runs_once_per_process(monkeypatch, fresh_probe):
    calls = []
    monkeypatch.setattr(compiling, "_dynamo_reason", lambda: calls.append(1) or "no dynamo")
    assert compiling.unavailable_reason("cpu") == compiling.unavailable_reason("cpu")
    assert calls == [1]


def test_compile_where_torch_cannot_compile_exits_2_with_one_line(monkeypatch, capsys, fresh_probe, tmp_path):
    with cxx("/nonexistent/bin/c++"):
        code, out, err = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cpu",
                                    "--compile", "-v", "vanilla", "--out", tmp_path / "run")
    lines = [ln for ln in (out + err).splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "torch cannot compile on cpu" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_estimate_of_a_compiled_plan_names_the_torch_compile_cost(monkeypatch, capsys):
    code, out, _ = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cpu",
                              "--compile", "-v", "vanilla", "--estimate")
    assert code in (0, None) and "torch.compile (inductor)" in out


# --- the report ----------------------------------------------------------------------------------------

def sweep_row(variant: str, family: str, n: int, latency: float, compiled: bool | None, status="ok",
              reason="", compile_s=None) -> dict:
    return {"suite": "throughput", "kind": "sweep", "variant": variant, "family": family, "exact": True,
            "device_name": "cpu", "mode": "fwd", "level": "kernel", "dtype": "float32", "causal": True,
            "head_dim": 64, "n_heads": 4, "kv_heads": None, "total_tokens": 1024, "seq_len": n,
            "params": "{}", "status": status, "reason": reason, "latency_ms": latency, "compiled": compiled,
            "compile_s": compile_s}


def compiled_rows() -> pd.DataFrame:
    rows = [sweep_row(v, v, n, ms, None) for v, ms in (("vanilla", 2.0), ("linear", 1.0)) for n in (128, 512)]
    rows += [sweep_row("vanilla", "vanilla", n, 1.0, True, compile_s=12.0) for n in (128, 512)]
    rows += [sweep_row("linear", "linear", n, math.nan, True, "unsupported", "torch.compile failed: X")
             for n in (128, 512)]
    return pd.DataFrame(rows)


def test_the_analyses_see_only_the_eager_rows():
    tp = data.throughput(compiled_rows())
    assert len(tp) == 4 and set(tp.latency_ms) == {1.0, 2.0} and set(tp.series) == {"vanilla", "linear"}


def test_the_compiled_series_pairs_each_variant_eager_and_compiled():
    series = data.compiled_series(compiled_rows())
    vanilla = series[series.variant == "vanilla"].set_index(["compiled", "seq_len"])
    assert vanilla.latency_ms.to_dict() == {(False, 128): 2.0, (False, 512): 2.0, (True, 128): 1.0,
                                            (True, 512): 1.0}
    assert vanilla.compile_s[True].tolist() == [12.0, 12.0]
    linear = series[(series.variant == "linear") & series.compiled]
    assert set(linear.status) == {"unsupported"} and set(linear.reason) == {"torch.compile failed: X"}
    assert data.compiled_series(compiled_rows()[lambda d: d.compiled.isna()]).empty


def test_the_chart_draws_eager_and_compiled_per_family_and_marks_what_did_not_compile():
    fig = charts.compiled_chart(data.compiled_series(compiled_rows()))
    gids = {a.get_gid() for ax in fig.axes for a in ax.get_lines()}
    assert {"eager:vanilla", "compiled:vanilla", "eager:linear", "not-compiled:linear"} <= gids
    assert "compiled:linear" not in gids  # it never ran compiled: no line, an x
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert len(titles) == 2 and all(t.split("\n")[0] in ("vanilla", "linear") for t in titles)
    compiled_line = next(a for ax in fig.axes for a in ax.get_lines() if a.get_gid() == "compiled:vanilla")
    eager_line = next(a for ax in fig.axes for a in ax.get_lines() if a.get_gid() == "eager:vanilla")
    assert compiled_line.get_linestyle() == "--" and eager_line.get_linestyle() == "-"
    assert compiled_line.get_markerfacecolor() == "none" != eager_line.get_markerfacecolor()  # a lone point
    assert compiled_line.get_color() == eager_line.get_color()
    assert list(compiled_line.get_ydata()) == [1.0, 1.0]


def test_no_compiled_row_draws_no_chart():
    assert charts.compiled_chart(data.compiled_series(compiled_rows()[lambda d: d.compiled.isna()])) is None
