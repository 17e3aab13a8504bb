"""The throughput suite: planning, failures as rows, resume, the CLI, and the pytest-benchmark route."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from rich.console import Console

from harness import env, flops, memory, registry, runner, store, timing
from harness.context import RunContext
from suites import frontier, grids
from suites.throughput import benchmark_json, measuring, planning, summary, workloads
from tests import test_report_fixtures as fx

ROOT = Path(__file__).resolve().parent.parent
SUITE = "suites.throughput.suite"
CONTEXT = RunContext()  # one worker's: the matmul peak is measured once for the cases run here
GPU_ONLY = ("mem_alloc_peak_bytes", "mem_reserved_peak_bytes", "nvml_mem_used_bytes",
            "device_mem_total_bytes", "power_w_mean", "energy_j_per_token", "sm_clock_mhz_mean",
            "temperature_c_max", "throttled")


def case(**fields) -> planning.Case:
    """A small CPU case: 4 heads of 64, 1024 tokens, vanilla kernel forward at N=128 unless told."""
    fields = {"variant": "vanilla", "device": "cpu", "mode": "fwd", "level": "kernel", "seq_len": 128,
              "total_tokens": 1024, "n_heads": 4, "head_dim": 64, "budget_ms": 10, "warmup_ms": 0, **fields}
    return planning.Case(batch=planning.batch_for(fields["total_tokens"], fields["seq_len"]), **fields)


# --- planning -----------------------------------------------------------------------------------------

def test_cpu_quick_covers_every_variant_in_fp32_within_the_cpu_range():
    cases = planning.plan("quick", "cpu")
    assert {c.variant for c in cases} == set(registry.names())
    assert {c.dtype for c in cases} == {"float32"}
    assert {c.mode for c in cases} == set(grids.MODES) and {c.level for c in cases} == set(grids.LEVELS)
    assert all(128 <= c.seq_len <= 4096 for c in cases)
    assert all(c.batch == max(1, c.total_tokens // c.seq_len) for c in cases)


def test_cuda_standard_is_lean_and_full_is_the_whole_grid():
    standard, full = planning.plan("standard", "cuda"), planning.plan("full", "cuda")
    assert {c.dtype for c in standard} == {"bfloat16"} and len({c.head_dim for c in standard}) == 1
    kernel = {c.seq_len for c in standard if c.level == "kernel"}
    layer = {c.seq_len for c in standard if c.level == "layer"}
    assert min(kernel) == 512 and max(kernel) == 131072 and len(layer) < len(kernel)
    assert {c.seq_len for c in full} == {2**e for e in range(9, 18)}
    assert {c.dtype for c in full} == {"bfloat16", "float16"} and {c.head_dim for c in full} == {64, 128}
    assert {c.causal for c in full} == {True, False}
    assert all(c.causal for c in full if c.mode == "decode")
    assert all(c.n_heads * c.head_dim == 2048 and c.total_tokens == 16384 for c in full)


def test_plan_filters():
    cases = planning.plan("quick", "cpu", variants=["linear"], seq_lens=[256, 64], dtypes=["fp32"])
    assert {c.variant for c in cases} == {"linear"} and {c.seq_len for c in cases} == {64, 256}
    assert [c.seq_len for c in cases[:2]] == [64, 256]  # smallest first within a group: OOM skips larger


@pytest.mark.parametrize("kwargs,message", [
    ({"variants": ["nope"]}, "unknown variant 'nope'"),
    ({"seq_lens": [128, 0]}, "must be positive"),
    ({"dtypes": ["fp16"]}, "float16 is not a throughput dtype on cpu"),
    ({"dtypes": ["int7"]}, "unknown dtype"),
])
def test_plan_rejects_bad_input_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        planning.plan("quick", "cpu", **kwargs)
    assert "\n" not in str(info.value)


def test_bf16_on_a_gpu_without_it_is_an_argument_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(ValueError, match="bfloat16 is not supported by Tesla V100"):
        planning.plan("quick", "cuda", dtypes=["bf16"])
    assert {c.dtype for c in planning.plan("quick", "cuda")} == {"float16"}  # the default falls back


def test_case_validation():
    with pytest.raises(ValidationError, match="batch must be"):
        planning.Case(**{**case().model_dump(), "batch": 3})
    with pytest.raises(ValidationError, match="decode is causal"):
        case(mode="decode", causal=False)
    with pytest.raises(ValidationError, match="greater than 0"):
        planning.Case(**{**case().model_dump(), "seq_len": 0})


def test_oom_group_is_everything_but_the_length():
    small, large = case(seq_len=128), case(seq_len=1024)
    assert small.oom_key()[0] == large.oom_key()[0] and large.oom_key()[1] == 1024
    for other in (case(mode="fwd_bwd"), case(level="layer"), case(variant="linear"), case(head_dim=32)):
        assert other.oom_key()[0] != small.oom_key()[0]


def test_rows_carry_family_exact_and_backend_from_the_registry():
    row = case(variant="linear").flat()
    assert (row["family"], row["exact"], row["backend"]) == ("linear", False, "torch-chunked")


def test_peak_matmul_is_measured_per_precision_and_cached_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setitem(measuring.PEAK_MATMUL_SIZE, "cpu", 256)
    measured = []
    rates = {torch.float32: 0.3, torch.bfloat16: 2.5}
    monkeypatch.setattr(timing, "matmul_peak_tflops",
                        lambda device, dtype, size, budget: measured.append(dtype) or rates[dtype])
    worker = RunContext(tmp_path)
    assert measuring.peak_matmul_tflops("cpu", "float32", worker) == ("float32", 0.3)
    assert measuring.peak_matmul_tflops("cpu", "bfloat16", worker) == ("bfloat16", 2.5)
    assert measuring.peak_matmul_tflops("cpu", "float32", worker) == ("float32", 0.3)
    assert measured == [torch.float32, torch.bfloat16]  # once per precision
    cached = json.loads((tmp_path / measuring.PEAK_FILE).read_text())
    assert sorted(cached.values()) == [0.3, 2.5] and all("256^3" in k for k in cached)
    (tmp_path / measuring.PEAK_FILE).write_text(json.dumps({k: 123.0 for k in cached}))
    assert measuring.peak_matmul_tflops("cpu", "bfloat16", worker) == ("bfloat16", 2.5)  # this worker's
    another = RunContext(tmp_path)  # a new worker process of the same run reads the run directory
    assert measuring.peak_matmul_tflops("cpu", "bfloat16", another) == ("bfloat16", 123.0)
    assert measured == [torch.float32, torch.bfloat16]
    elsewhere = RunContext()  # no run directory (a Ray node): measured, kept by the worker alone
    assert measuring.peak_matmul_tflops("cpu", "float32", elsewhere) == ("float32", 0.3)
    assert measured == [torch.float32, torch.bfloat16, torch.float32]


def test_the_cuda_fp32_peak_follows_the_tf32_setting(monkeypatch):
    assert flops.matmul_precision("cuda", "float32", tf32=True) == "float32+tf32"
    assert flops.matmul_precision("cuda", "float32", tf32=False) == "float32"
    assert flops.matmul_precision("cpu", "float32", tf32=True) == "float32"  # TF32 is a GPU format
    assert flops.matmul_precision("cuda", "bfloat16", tf32=True) == "bfloat16"
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 allowed, as a user may set it
    try:
        assert measuring.tf32_enabled("cuda") and not measuring.tf32_enabled("cpu")
    finally:
        torch.set_float32_matmul_precision(before)
    assert not measuring.tf32_enabled("cuda")
    seen = []
    monkeypatch.setattr(timing, "matmul_peak_tflops",
                        lambda device, dtype, size, budget: seen.append(torch.get_float32_matmul_precision())
                        or 1.0)
    measuring._peak_matmul_tflops("cuda", "GPU", "float32+tf32", None)
    measuring._peak_matmul_tflops("cuda", "GPU", "float32", None)
    # TF32 on for its own peak only, and the setting restored.
    assert seen == ["high", before] and torch.get_float32_matmul_precision() == before


def test_each_row_is_compared_with_the_peak_of_its_own_dtype():
    bench = {"stats": {"median": 0.01, "rounds": 3, "data": [0.01, 0.01, 0.01]},
             "extra_info": {"flops": 10**10, "tokens_per_call": 100, "peak_matmul_tflops": 2.0,
                            "case": {"batch": 1}}}
    metrics = measuring.metrics_from_benchmark(bench)
    assert metrics["tflops"] == pytest.approx(1.0) and metrics["pct_of_peak"] == pytest.approx(50.0)


# --- failures are data ------------------------------------------------------------------------------

@pytest.mark.slow
def test_mamba_kernel_is_its_scan_and_it_decodes_at_the_layer_level():
    scan = case(variant="mamba", level="kernel", seq_len=64)
    status, reason, metrics = runner.execute(SUITE, scan, CONTEXT)
    assert status == "ok", reason
    assert metrics["tokens_per_s"] > 0 and metrics["flops"] is None
    decode = case(variant="mamba", level="kernel", mode="decode")
    status, reason, _ = runner.execute(SUITE, decode, CONTEXT)
    assert status == "unsupported" and "layer level" in reason


def test_nan_output_is_a_recorded_failure(monkeypatch):
    v = registry.get("vanilla")
    monkeypatch.setattr(v, "attention_fn", lambda q, k, v, causal=False: q * float("nan"))
    status, reason, metrics = runner.execute(SUITE, case(), CONTEXT)
    assert status == "nonfinite" and "NaN" in reason and metrics == {}


# Per-case timeout of the test below, which the hang waits out whole: generous for its ordinary cases
# (about 0.1 s each on a quiet machine, a second or two on a loaded one; a worker's start-up is not charged),
# and far shorter than its hang (an hour of wall-clock warm-up).
HANG_TIMEOUT_S = 10


@pytest.mark.slow
def test_oom_under_a_memory_cap_skips_larger_n_and_a_hang_is_stopped(tmp_path, monkeypatch):
    # The run's matmul peak, cached in its directory beforehand: measuring it (a 2048^3 matmul, several
    # times) is the slowest part of the first case, 8.6 s alone at a load average of 10 on 2 cores (past
    # the 5 s timeout this test had). The peak is not what this test checks.
    monkeypatch.setattr(timing, "matmul_peak_tflops", lambda device, dtype, size, budget_ms: 1.0)
    measuring.peak_matmul_tflops("cpu", "float32", RunContext(tmp_path))
    # 96 MiB: N = 512 needs about 32 MiB of scores; glibc heap layout makes a tighter cap flaky
    capped = [case(seq_len=n, memory_cap_mb=96) for n in (128, 512, 4096, 8192)]
    hang = case(seq_len=64, warmup_ms=3_600_000)  # an hour of warm-up by the clock, however fast the machine
    after = case(seq_len=256)
    runner.run([*capped, hang, after], SUITE, tmp_path, timeout_s=HANG_TIMEOUT_S, progress=False)
    df = store.load(tmp_path).set_index("case_id")
    status = {c.seq_len: df.loc[c.case_id, "status"] for c in capped}
    assert status == {128: "ok", 512: "ok", 4096: "oom", 8192: "skipped"}
    assert "MemoryError" in df.loc[capped[2].case_id, "reason"]
    assert df.loc[hang.case_id, "status"] == "timeout"
    assert df.loc[hang.case_id, "reason"] == f"no result within the per-case timeout of {HANG_TIMEOUT_S} s"
    assert df.loc[after.case_id, "status"] == "ok"  # the sweep goes on, memory freed, worker replaced
    assert (df.loc[[c.case_id for c in capped[:2]], "peak_matmul_tflops"] == 1.0).all()  # the cached peak


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    cases = [case(seq_len=n, budget_ms=300) for n in (64, 128, 256, 512)]  # killed after 2, 2 to resume
    script = textwrap.dedent(f"""
        from harness import runner
        from tests.test_throughput import case
        cases = [case(seq_len=n, budget_ms=300) for n in (64, 128, 256, 512)]
        runner.run(cases, {SUITE!r}, {str(tmp_path)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    deadline = time.time() + 120
    while len(store.RunStore(tmp_path).finished()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = store.load(tmp_path)
    assert 2 <= len(kept) < len(cases) and (kept.status == "ok").all()
    summary = runner.run(cases, SUITE, tmp_path, progress=False)
    assert summary.skipped_as_done == len(kept)
    df = store.load(tmp_path)
    assert sorted(df.case_id) == sorted(c.case_id for c in cases) and (df.status == "ok").all()


# --- the command line ---------------------------------------------------------------------------------

def attnbench(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "harness", "run", "--suite", "throughput", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("args,message", [
    (["-v", "nope"], "unknown variant"),
    (["-n", "0"], "--seq-len must be between 1 and"),
    (["--dtype", "fp16"], "float16 is not a throughput dtype on cpu"),
    (["--find-max-n", "--memory-gb", "-1"], "--memory-gb must be a number greater than 0, got -1"),
    (["--memory-gb", "2"], "--memory-gb applies to --find-max-n"),
    (["--find-max-n", "-v", "flash-cudnn", "-v", "flash-efficient"], "no variant among flash-cudnn, "
                                                                     "flash-efficient runs on cpu"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message, monkeypatch, capsys):
    """In-process: an interpreter each added nothing (test_cli_end_to_end_on_cpu runs the real one)."""
    code, _, err = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cpu", *args,
                              "--out", tmp_path / "x")
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "run"
    proc = attnbench("--device", "cpu", "-v", "vanilla", "-v", "linear", "-n", "128", "--out", str(out),
                     "--no-progress")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    df = store.load(out)
    assert len(df) == 2 * len(grids.LEVELS) * len(grids.MODES), df.reason.tolist()
    assert (df.status == "ok").all(), df.reason.tolist()
    assert (df.latency_ms_p20 <= df.latency_ms).all() and (df.latency_ms <= df.latency_ms_p80).all()
    tokens = df.batch * df.seq_len.where(df["mode"] != "decode", 1)
    assert df.tokens_per_s.to_numpy() == pytest.approx((tokens / (df.latency_ms / 1e3)).to_numpy())
    vanilla, linear = df[df.variant == "vanilla"], df[df.variant == "linear"]
    assert vanilla.flops.notna().all() and linear.flops.isna().all() and linear.tflops.isna().all()
    assert vanilla.tflops.to_numpy() == pytest.approx((vanilla.flops / vanilla.latency_ms / 1e9).to_numpy())
    assert vanilla.pct_of_peak.to_numpy() == pytest.approx(
        (100 * vanilla.tflops / vanilla.peak_matmul_tflops).to_numpy())
    assert df.peak_matmul_tflops.nunique() == 1  # measured once per run
    assert all(c not in df or df[c].isna().all() for c in GPU_ONLY)
    assert set(df.family) == {"vanilla", "linear"} and set(df.timer) == {"perf_counter"}
    assert "largest N that ran" in stdout
    # Schema round trip: the config columns rebuild the case, and with it the case id.
    for row in df.to_dict("records"):
        fields = {k: row[k] for k in planning.Case.model_fields if k in row}  # all-null columns are dropped
        fields["params"] = json.loads(fields["params"])
        assert planning.Case(**fields).case_id == row["case_id"]
        assert row["schema_version"] == store.SCHEMA_VERSION


def test_summary_reports_the_largest_feasible_n():
    rows = pd.DataFrame({
        "suite": "throughput", "variant": "vanilla", "level": "kernel", "mode": "fwd",
        "seq_len": [512, 1024, 2048, 4096], "status": ["ok", "ok", "oom", "skipped"],
        "device_name": "GPU",
    })
    assert summary.largest_feasible(rows) == {("vanilla", "kernel", "fwd"): (1024, 2048)}


def test_summarize_prints_a_table_of_a_run(tmp_path):
    run = store.RunStore(tmp_path)
    run.open({"device": "cpu", "device_name": "CPU"})
    for c, status in ((case(seq_len=256), "ok"), (case(seq_len=512), "oom"), (case(mode="decode"), "ok")):
        run.write({"case_id": c.case_id, **c.flat(), "status": status, "reason": "", "device_name": "CPU"})
    console = Console(file=StringIO(), width=200)
    summary.summarize(tmp_path, console)
    lines = console.file.getvalue().splitlines()
    assert any("vanilla" in line and "kernel" in line and "256 (oom 512)" in line and "128" in line
               for line in lines)


# --- pytest-benchmark route ---------------------------------------------------------------------------

@pytest.mark.slow
def test_pytest_benchmark_json_converts_to_store_rows(tmp_path):
    report = tmp_path / "bench.json"
    outer = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not an xdist worker's
    environment = {**outer, "ATTNBENCH_DEVICE": "cpu", "ATTNBENCH_VARIANTS": "vanilla,linear",
                   "ATTNBENCH_SEQ_LENS": "128"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "suites/bench_throughput.py",
         "-k", "kernel and not fwd_bwd", f"--benchmark-json={report}"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw = json.loads(report.read_text())
    rows = benchmark_json.rows_from_benchmark_json(report)
    quick = planning.plan("quick", "cpu", variants=["vanilla", "linear"], seq_lens=[128])
    planned = {c.case_id: c for c in quick if c.level == "kernel" and c.mode != "fwd_bwd"}
    assert sorted(r["case_id"] for r in rows) == sorted(planned)
    for bench, row in zip(raw["benchmarks"], rows, strict=True):
        assert row["latency_ms"] == pytest.approx(bench["stats"]["median"] * 1e3)
        assert row["rounds"] == len(bench["stats"]["data"]) and row["status"] == "ok"
        assert (row["tflops"] is None) == (row["variant"] == "linear")
        assert row["mode"] == planned[row["case_id"]].mode and row["family"] == row["variant"]
    imported = subprocess.run([sys.executable, "-m", "harness", "import-benchmark", str(report),
                               "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert imported.returncode == 0 and f"{len(rows)} rows" in imported.stdout, imported.stderr
    df = store.load(tmp_path / "run")
    assert sorted(df.case_id) == sorted(planned) and (df.schema_version == store.SCHEMA_VERSION).all()
    assert store.RunStore(tmp_path / "run").environment()["device"] == "cpu"


@pytest.mark.cuda
@pytest.mark.smoke
def test_a_cuda_case_fills_every_gpu_column(tmp_path):
    c = case(device="cuda", dtype="bfloat16", variant="flash-sdpa", seq_len=1024, total_tokens=16384,
             n_heads=32, energy_ms=200)
    runner.run([c], SUITE, tmp_path, progress=False)
    row = store.load(tmp_path).iloc[0]
    assert row.status == "ok", row.reason
    for column in GPU_ONLY:
        assert column in row and row[column] is not None, column
    assert row.mem_alloc_peak_bytes <= row.mem_reserved_peak_bytes <= row.device_mem_total_bytes
    assert row.timer == "cuda_event_timer" and row.l2_flush_bytes > 0
    assert 0 < row.pct_of_peak < 100 and torch.cuda.is_available()


# --- the CPU standard grid ------------------------------------------------------------------------------

LINEAR_TIME = ("linear", "performer", "mamba", "longformer-banded", "flash-sdpa", "mamba2", "gla", "retnet",
               "deltanet", "gated-deltanet")


def test_cpu_standard_sweeps_every_linear_time_family_to_64k_tokens_at_constant_tokens(monkeypatch):
    monkeypatch.setattr(planning, "cpu_bf16_supported", lambda: True)
    cases = planning.plan("standard", "cpu")
    sweep = [c for c in cases if c.kind == "sweep" and c.layout == "square"]  # ragged: test_ragged.py
    assert min(c.seq_len for c in sweep) == 256
    for name in LINEAR_TIME:
        longest = {(c.level, c.mode, c.dtype): c.seq_len for c in sweep if c.variant == name}
        assert longest[("kernel", "fwd", "float32")] >= 65536, name
        assert longest[("kernel", "fwd", "bfloat16")] >= 65536, name
    assert {c.mode for c in sweep} == set(grids.MODES) and {c.level for c in sweep} == set(grids.LEVELS)
    grid = grids.THROUGHPUT_GRIDS["cpu", "standard"]
    assert all(c.total_tokens == grid.total_tokens and c.batch == max(1, grid.total_tokens // c.seq_len)
               for c in cases)
    assert all(c.time_cap_ms == grid.time_cap_ms and c.remeasure_ms > 0 for c in sweep)
    fidelity = [c for c in cases if c.kind == "fidelity"]
    assert len(fidelity) == len(grid.fidelity) and all(c.mode == "fwd" for c in fidelity)
    assert any(c.seq_len >= 1024 for c in fidelity)
    # A masked family's dense reference path (no FlexAttention on the CPU): the forward curve only.
    dense = {c.variant for c in sweep
             if registry.get(c.variant).backend_for("cpu") == planning.DENSE_MASK_BACKEND}
    assert dense >= {"longformer", "sparse-bigbird"}
    assert {(c.level, c.mode, c.dtype) for c in sweep if c.variant in dense} == {("kernel", "fwd", "float32")}
    # Set lengths per kind of path, not the time cap's guess: the N x N score paths stop at 8192 (vanilla)
    # and 4096 (the masked families), every other path runs on to 128K.
    fwd = [c for c in sweep if (c.level, c.mode, c.dtype) == ("kernel", "fwd", "float32")]
    assert max(c.seq_len for c in fwd if c.variant == "vanilla") == 8192
    assert max(c.seq_len for c in fwd if c.variant in dense) == 4096
    assert max(c.seq_len for c in sweep if c.variant == "vanilla" and c.mode != "decode") == 8192
    assert all(max(c.seq_len for c in fwd if c.variant == name) == 131072 for name in LINEAR_TIME)


def test_a_path_is_quadratic_in_memory_by_its_memory_model():
    """vanilla's scores and a masked family's dense path grow as N^2; SDPA's fused kernel and the
    recurrent scans do not; a path with no memory model is not counted (the time cap guards it)."""
    quadratic = {name for name in registry.names() if planning.quadratic_memory(registry.get(name), "cpu")}
    masked = {name for name in registry.names()
              if registry.get(name).backend_for("cpu") == planning.DENSE_MASK_BACKEND}
    assert quadratic == {"vanilla"} | masked
    no_model = dataclasses.replace(registry.get("vanilla"), peak_bytes=lambda call, **params: None)
    assert not planning.quadratic_memory(no_model, "cpu")


def test_cpu_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(planning, "cpu_bf16_supported", lambda: False)
    assert {c.dtype for c in planning.plan("standard", "cpu")} == {"float32"}
    asked = planning.plan("standard", "cpu", variants=["linear"], dtypes=["bf16"])  # asked for: measured
    assert {c.dtype for c in asked} == {"bfloat16"}
    assert {(c.level, c.mode) for c in asked} == {(lv, m) for lv in grids.LEVELS for m in grids.MODES} - {
        ("layer", "fwd_bwd")}  # the CPU standard grid has no layer-level forward+backward


def timed(c: planning.Case, wall_s: float) -> tuple[planning.Case, str, dict]:
    return c, "ok", {"case_wall_ms": wall_s * 1e3}


def test_time_cap_prediction_extends_time_per_sequence():
    group = [case(seq_len=n, total_tokens=16384, time_cap_ms=5_000) for n in (1024, 2048, 4096, 8192)]
    history = [timed(group[0], 1.0), timed(group[1], 2.0)]
    pairs = [(c, m) for c, _, m in history]
    # per sequence: 1 s / 16 and 2 s / 8 -> k = 2; at 4096 (batch 4): 0.25 s * 4 * 4 = 4 s
    assert planning.predicted_wall_s(*pairs, group[2]) == pytest.approx(4.0)
    assert group[2].skip_reason(history) is None
    # at 8192 (batch 2): 0.25 s * 16 * 2 = 8 s, over the 5 s cap
    assert "predicted to take 8 s from N = 1024 and 2048 (time cap 5 s)" in group[3].skip_reason(history)
    # Linear-time: k clamps at 1, a constant-token case costs the same at every length.
    flat = [(group[0], {"case_wall_ms": 1000.0}), (group[1], {"case_wall_ms": 500.0})]
    assert planning.predicted_wall_s(*flat, group[3]) == pytest.approx(0.5)


def test_time_cap_and_timeouts_skip_the_longer_lengths():
    short, long = case(seq_len=1024, time_cap_ms=1000), case(seq_len=2048, time_cap_ms=1000)
    reason = long.skip_reason([timed(short, 1.5)])
    assert "longer than N = 1024, whose measurement took 1.5 s (time cap 1 s)" == reason
    assert long.skip_reason([timed(short, 0.5)]) is None  # one point: no prediction yet
    assert "timed out" in long.skip_reason([(short, "timeout", {})])
    assert case(seq_len=2048).skip_reason([timed(short, 99.0)]) is None  # no cap


def test_a_compiled_cases_compile_does_not_count_against_the_time_cap():
    """The compiled series pays a compile at every length, not growing with N: 1.5 s of which 1.2 s
    compiling is 0.3 s of measuring, under a 1 s cap. An eager row's compile_s is null (NaN once read
    back from the store): all of its wall counts."""
    short, long = case(seq_len=1024, time_cap_ms=1000), case(seq_len=2048, time_cap_ms=1000)
    compiled = (short, "ok", {"case_wall_ms": 1500.0, "compile_s": 1.2})
    assert long.skip_reason([compiled]) is None
    over = (short, "ok", {"case_wall_ms": 2500.0, "compile_s": 1.2})
    assert "whose measurement took 1.3 s (time cap 1 s)" in long.skip_reason([over])
    for eager in (None, float("nan")):
        assert "took 1.5 s" in long.skip_reason([(short, "ok", {"case_wall_ms": 1500.0, "compile_s": eager})])


@pytest.mark.slow
def test_the_runner_skips_what_the_time_cap_rules_out(tmp_path):
    capped = [case(seq_len=n, time_cap_ms=1) for n in (64, 128, 256)]
    runner.run(capped, SUITE, tmp_path, progress=False)
    df = store.load(tmp_path).set_index("seq_len")
    assert df.loc[64, "status"] == "ok" and df.loc[64, "case_wall_ms"] > 1
    assert (df.loc[[128, 256], "status"] == "skipped").all()
    assert df.loc[128, "reason"].startswith("longer than N = 64, whose measurement took")


# --- noise, threads, fidelity ----------------------------------------------------------------------------

def test_a_row_carries_its_spread_interval_threads_and_governor():
    status, reason, m = runner.execute(SUITE, case(remeasure_ms=50), CONTEXT)
    assert status == "ok", reason
    assert m["rounds"] >= timing.MIN_ROUNDS and m["spread_iqr"] >= 0 and m["median_ci"] >= 0
    assert isinstance(m["noisy"], bool) and m["extra_rounds"] >= 0
    assert m["threads"] == torch.get_num_threads() and "cpu_governor" in m
    assert m["noisy"] == (m["spread_iqr"] > measuring.NOISE_SPREAD_LIMIT
                          and m["median_ci"] > measuring.NOISE_PRECISION)
    assert 0.0 <= m["others_cpu_share"] <= 1.0


def test_a_case_makes_one_call_before_its_rounds_traced_for_memory_and_no_round_is_traced(monkeypatch):
    """The sizing call is the memory call (traced on the CPU); the timed rounds run untraced."""
    calls = []
    build = measuring.build_workload

    def counted(case):
        work = build(case)
        call = work.call
        work.call = lambda: (calls.append(torch.autograd.profiler._is_profiler_enabled), call())[1]
        return work

    monkeypatch.setattr(measuring, "build_workload", counted)
    status, reason, m = runner.execute(SUITE, case(), CONTEXT)
    assert status == "ok", reason
    assert calls[0] is True and not any(calls[1:]) and len(calls) == 1 + m["rounds"]
    assert m["mem_tracked_peak_bytes"] > 0


def test_others_cpu_share_is_the_busy_time_not_ours_over_the_machine():
    before, after = (100.0, 10.0, 0.0, 2), (101.5, 10.5, 1.0, 2)
    assert env.others_cpu_share(before, after) == pytest.approx(0.5)  # 1.5 s busy, 0.5 ours, 2 cores x 1 s
    assert env.others_cpu_share(before, (100.2, 10.5, 1.0, 2)) == 0.0  # never below 0
    assert env.others_cpu_share(None, after) is None and env.others_cpu_share(after, before) is None


def test_cpu_snapshot_reads_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 25 0 0\ncpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\n"
                    "intr 1\n")
    monkeypatch.setattr(env, "PROC_STAT", stat)
    busy, own, _, cores = env.cpu_snapshot()
    assert busy == pytest.approx(175 / os.sysconf("SC_CLK_TCK"))  # idle and iowait left out
    assert own >= 0 and cores == 2
    monkeypatch.setattr(env, "PROC_STAT", tmp_path / "absent")
    assert env.cpu_snapshot() is None


@pytest.mark.skipif(not env.PROC_STAT.exists(), reason="no /proc/stat (not Linux)")
def test_another_busy_process_shows_in_others_cpu_share():
    before = env.cpu_snapshot()
    spin = "import time\nend = time.monotonic() + 1\nwhile time.monotonic() < end:\n    pass"
    subprocess.run([sys.executable, "-c", spin], check=True)  # we wait, it spins: about one core-second
    assert env.others_cpu_share(before, env.cpu_snapshot()) > 0.5 / before[3]


def test_a_fidelity_case_times_the_same_call_with_an_independent_timer():
    status, reason, m = runner.execute(SUITE, case(kind="fidelity", seq_len=256, budget_ms=40), CONTEXT)
    assert status == "ok", reason
    assert m["reference_timer"] == "torch.utils.benchmark.Timer.blocked_autorange"
    assert m["reference_latency_ms"] > 0 and m["latency_ms"] > 0
    assert m["fidelity_ratio"] == pytest.approx(m["latency_ms"] / m["reference_latency_ms"])
    assert m["rounds"] >= 2 * timing.MIN_ROUNDS  # ours, in every turn


def test_a_fidelity_case_alternates_the_two_timers(monkeypatch):
    turns = []
    real_rounds, real_reference = timing.time_rounds, timing.independent_median_ms

    def ours(*args, **kwargs):
        turns.append("ours")
        return real_rounds(*args, **kwargs)

    def theirs(target, setup, device, budget_ms, *args):
        turns.append(("theirs", budget_ms))
        return real_reference(target, setup, device, budget_ms, *args)

    monkeypatch.setattr(timing, "time_rounds", ours)
    monkeypatch.setattr(timing, "independent_median_ms", theirs)
    monkeypatch.setattr(measuring, "fidelity_turns", lambda budget_ms, estimate_ms: 4)
    status, reason, _ = runner.execute(SUITE, case(kind="fidelity", seq_len=256, budget_ms=40), CONTEXT)
    assert status == "ok", reason
    assert turns == ["ours", ("theirs", 10.0)] * 4


def test_fidelity_turns_are_short_but_hold_our_minimum_rounds():
    turns = measuring.fidelity_turns
    assert turns(4000, estimate_ms=9) == 4000 // measuring.FIDELITY_TURN_MS  # CPU standard, linear 4096
    assert turns(4000, estimate_ms=200) == 4000 // (200 * timing.MIN_ROUNDS)  # 600 ms turns
    assert measuring.fidelity_turns(40, estimate_ms=1) == 2  # never fewer than two


# --- decode state ------------------------------------------------------------------------------------------

def decode_state(**fields) -> int:
    c = case(mode="decode", seq_len=96, total_tokens=192, **fields)  # batch 2
    return workloads.build_workload(c).state_bytes


def test_decode_state_bytes_match_the_arithmetic_of_each_state():
    b, h, d, n = 2, 4, 64, 96
    kv = 2 * b * h * (n + 1) * d  # keys and values, room for the decoded token
    assert decode_state(variant="vanilla") == kv * 4
    assert decode_state(variant="flash-sdpa", dtype="bfloat16") == kv * 2
    assert decode_state(variant="vanilla", level="layer") == kv * 4  # the mixer's state wraps the same cache
    # linear: S = phi(K)^T V (d x d), z = sum phi(k) (d), the shift (1): per head, in float32.
    assert decode_state(variant="linear") == b * h * (d * d + d + 1) * 4
    m = registry.get("performer").defaults["nb_features"]
    assert decode_state(variant="performer") == b * h * (m * d + m + 1) * 4
    # mamba: the conv window (d_inner x d_conv, the model's dtype) and the SSM state (d_inner x d_state).
    p = registry.get("mamba").defaults
    d_inner = p["expand"] * h * d
    assert decode_state(variant="mamba", level="layer") == b * d_inner * (p["d_conv"] + p["d_state"]) * 4
    assert decode_state(variant="mamba", level="layer", dtype="bfloat16") == \
        b * d_inner * (p["d_conv"] * 2 + p["d_state"] * 4)  # the SSM state stays float32


def test_tensor_bytes_walks_any_state_and_counts_a_storage_once():
    from dataclasses import dataclass

    @dataclass
    class Cache:
        k: torch.Tensor
        view: torch.Tensor

    class Holder:
        def __init__(self):
            self.caches = {"a": Cache(torch.zeros(10), torch.zeros(1))}
            self.caches["a"].view = self.caches["a"].k[2:5]  # a view of k: no extra bytes
            self.pair = (torch.zeros(3, dtype=torch.float64), 7, "name")
            self.me = self  # cycles end

    assert memory.tensor_bytes(Holder()) == 10 * 4 + 3 * 8
    assert memory.tensor_bytes(None) == 0


def test_decode_rows_carry_the_state_per_sequence():
    status, reason, m = runner.execute(SUITE, case(mode="decode", variant="linear"), CONTEXT)
    assert status == "ok", reason
    assert m["decode_state_bytes_per_seq"] * 8 == m["decode_state_bytes"] == 8 * 4 * (64 * 64 + 64 + 1) * 4


# --- the memory frontier -----------------------------------------------------------------------------------

def test_bisection_finds_the_largest_length_within_its_resolution():
    tried = []

    def probe(n):
        tried.append(n)
        return ("ok", "") if n <= 300_000 else ("oom", "MemoryError: out of memory under a cap of 1 MiB")

    found = frontier.bisect_frontier(probe, start=1024)
    assert found.largest_ok <= 300_000 < found.first_failure
    assert found.first_failure - found.largest_ok <= max(64, found.largest_ok / 16)
    assert found.failure_status == "oom" and "MemoryError" in found.failure_reason
    assert tried[:9] == [1024 * 2**i for i in range(9)] and all(n % 64 == 0 for n in tried)
    never = frontier.bisect_frontier(lambda n: ("ok", ""), start=1024, maximum=8192)
    assert never.largest_ok == 8192 and never.first_failure is None
    at_once = frontier.bisect_frontier(lambda n: ("timeout", "time cap"), start=1024)
    assert at_once.largest_ok is None and at_once.first_failure == 1024


def test_the_predicted_frontier_of_materialized_attention_is_its_n_squared_wall():
    cap = 20 * 2**30
    n = frontier.predicted_max_n("vanilla", "cpu", "float32", cap)
    peak = lambda m: frontier.predicted_peak_bytes(frontier.frontier_case("vanilla", "cpu", "float32", m, 1))  # noqa: E731
    assert peak(n) <= cap < peak(n + 1)
    # 3 score matrices of 16 heads in float32 dominate: 192 N^2 bytes.
    assert n == pytest.approx((cap / 192) ** 0.5, rel=0.02)
    assert frontier.predicted_max_n("linear", "cpu", "float32", cap) > 50 * n  # linear in N: 700K here


MODEL_CHECKS = {  # variant -> (N, heads): the modelled buffers are most of a GiB, the call short (B=1)
    "vanilla": (2048, 16), "sparse-strided": (2048, 16), "flash-sdpa": (4096, 128), "linear": (32768, 16),
    "performer": (8192, 16), "longformer-banded": (8192, 16), "mamba": (16384, 16),
}
MEASURE_PEAK = """
import json, sys
from suites import frontier
from suites.throughput import planning
variant, n, heads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
case = planning.Case(variant=variant, device="cpu", dtype="float32", mode="fwd",
               level=frontier.frontier_level(variant), seq_len=n, batch=1, total_tokens=n, n_heads=heads,
               head_dim=64, budget_ms=1, warmup_ms=0, kind="frontier", memory_cap_mb=4096)
print(json.dumps(frontier.probe_frontier(case)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(MODEL_CHECKS))
def test_the_memory_model_predicts_the_measured_peak(variant):
    """The arithmetic of predicted_peak_bytes against the resident peak one call reaches in a fresh
    process (in a warm one, freed pages are reused and the peak reads low): within 25%."""
    if not memory.reset_peaks("cpu"):
        pytest.skip("no resident-peak measurement here (/proc/self/clear_refs)")
    n, heads = MODEL_CHECKS[variant]
    proc = subprocess.run([sys.executable, "-c", MEASURE_PEAK, variant, str(n), str(heads)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    predicted, peak = measured["predicted_peak_bytes"], measured["mem_rss_peak_bytes"]
    assert peak > 400 * memory.MIB  # the modelled buffers dominate
    assert predicted == pytest.approx(peak, rel=0.25)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "run", "--suite", "throughput", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_find_max_n_records_the_frontier_beside_the_prediction(tmp_path):
    out = tmp_path / "frontier"
    proc = cli("--device", "cpu", "--find-max-n", "--memory-gb", "0.5", "-v", "vanilla", "--out", str(out),
               "--timeout", "120")
    assert proc.returncode == 0, proc.stderr
    df = store.load(out)
    assert (df.kind == "frontier").all() and (df.batch == 1).all() and (df.n_heads == 16).all()
    ok, failed = df[df.status == "ok"], df[df.status != "ok"]
    largest = ok.seq_len.max()
    above = failed[failed.seq_len > largest]
    assert len(above) and set(above.status) == {"oom"} and above.reason.str.contains("MemoryError").all()
    assert above.seq_len.min() - largest <= max(64, largest / 16)
    predicted = df.predicted_max_n.iloc[0]
    assert (df.predicted_max_n == predicted).all()
    # The N^2 wall: measured and predicted within a factor 1.5 of each other under the same cap.
    assert predicted / 1.5 <= largest <= predicted * 1.5
    # What the call allocated stays under the cap (the process's resident peak also counts torch itself).
    assert ok.mem_tracked_peak_bytes.notna().all() and (ok.mem_tracked_peak_bytes <= 0.5 * 2**30).all()
    assert "vanilla: largest N" in proc.stdout
    assert [p.name for p in (out / "records").glob("*.parquet")] == ["suite-throughput.parquet"]  # compacted


def test_probe_lengths_runs_each_length_once_in_order_and_reads_the_frontier_from_them():
    probed = []

    def probe(n):
        probed.append(n)
        return {1024: ("ok", ""), 2048: ("oom", "MemoryError"), 4096: ("oom", "MemoryError")}[n]

    found = frontier.probe_lengths(probe, [4096, 1024, 2048, 1024])
    assert probed == [1024, 2048, 4096]
    assert (found.largest_ok, found.first_failure, found.failure_status) == (1024, 2048, "oom")
    # A timeout below a length that ran is no frontier: the largest that ran is, with no failure above.
    timed_out = {512: ("timeout", "time cap"), 1024: ("ok", "")}
    found = frontier.probe_lengths(lambda n: timed_out[n], [512, 1024])
    assert (found.largest_ok, found.first_failure) == (1024, None)


@pytest.mark.slow
def test_find_max_n_with_lengths_probes_only_those(tmp_path, monkeypatch, capsys):
    """The command in-process (its probes run in a worker process all the same)."""
    out = tmp_path / "frontier"
    args = ["--find-max-n", "-n", "1024", "-n", "512", "-v", "vanilla", "--out", out]
    code, stdout, stderr = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cpu",
                                      *args)
    assert code == 0, stderr
    df = store.load(out)
    assert sorted(df.seq_len) == [512, 1024] and (df.status == "ok").all() and (df.kind == "frontier").all()
    assert "vanilla: largest N 1024" in stdout
