"""The throughput suite: planning, failures as rows, resume, the CLI, and the pytest-benchmark route."""

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

from harness import registry, runner, store
from suites import throughput as tp

ROOT = Path(__file__).resolve().parent.parent
SUITE = "suites.throughput"
GPU_ONLY = ("mem_alloc_peak_bytes", "mem_reserved_peak_bytes", "nvml_mem_used_bytes",
            "device_mem_total_bytes", "power_w_mean", "energy_j_per_token", "sm_clock_mhz_mean",
            "temperature_c_max", "throttled")


def case(**fields) -> tp.Case:
    """A small CPU case: 4 heads of 64, 1024 tokens, vanilla kernel forward at N=128 unless told."""
    fields = {"variant": "vanilla", "device": "cpu", "mode": "fwd", "level": "kernel", "seq_len": 128,
              "total_tokens": 1024, "n_heads": 4, "head_dim": 64, "budget_ms": 10, "warmup_ms": 0, **fields}
    return tp.Case(batch=tp.batch_for(fields["total_tokens"], fields["seq_len"]), **fields)


# --- planning -----------------------------------------------------------------------------------------

def test_cpu_quick_covers_every_variant_in_fp32_within_the_cpu_range():
    cases = tp.plan("quick", "cpu")
    assert {c.variant for c in cases} == set(registry.names())
    assert {c.dtype for c in cases} == {"float32"}
    assert {c.mode for c in cases} == set(tp.MODES) and {c.level for c in cases} == set(tp.LEVELS)
    assert all(128 <= c.seq_len <= 4096 for c in cases)
    assert all(c.batch == max(1, c.total_tokens // c.seq_len) for c in cases)


def test_cuda_standard_is_lean_and_full_is_the_whole_grid():
    standard, full = tp.plan("standard", "cuda"), tp.plan("full", "cuda")
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
    cases = tp.plan("quick", "cpu", variants=["linear"], seq_lens=[256, 64], dtypes=["fp32"])
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
        tp.plan("quick", "cpu", **kwargs)
    assert "\n" not in str(info.value)


def test_bf16_on_a_gpu_without_it_is_an_argument_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(ValueError, match="bfloat16 is not supported by Tesla V100"):
        tp.plan("quick", "cuda", dtypes=["bf16"])
    assert {c.dtype for c in tp.plan("quick", "cuda")} == {"float16"}  # the default falls back


def test_case_validation():
    with pytest.raises(ValidationError, match="batch must be"):
        tp.Case(**{**case().model_dump(), "batch": 3})
    with pytest.raises(ValidationError, match="decode is causal"):
        case(mode="decode", causal=False)
    with pytest.raises(ValidationError, match="greater than 0"):
        tp.Case(**{**case().model_dump(), "seq_len": 0})


def test_oom_group_is_everything_but_the_length():
    small, large = case(seq_len=128), case(seq_len=1024)
    assert small.oom_key()[0] == large.oom_key()[0] and large.oom_key()[1] == 1024
    for other in (case(mode="fwd_bwd"), case(level="layer"), case(variant="linear"), case(head_dim=32)):
        assert other.oom_key()[0] != small.oom_key()[0]


def test_rows_carry_family_exact_and_backend_from_the_registry():
    row = case(variant="linear").flat()
    assert (row["family"], row["exact"], row["backend"]) == ("linear", False, "torch-chunked")


def test_peak_matmul_is_cached_in_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(tp.RUN_DIR_ENV, str(tmp_path))
    measured = tp.peak_matmul_tflops("cpu")
    cached = json.loads((tmp_path / tp.PEAK_FILE).read_text())
    assert list(cached.values()) == [measured]
    (tmp_path / tp.PEAK_FILE).write_text(json.dumps({k: 123.0 for k in cached}))
    tp._peak_matmul_tflops.cache_clear()  # a new worker process of the same run
    assert tp.peak_matmul_tflops("cpu") == 123.0


# --- failures are data ------------------------------------------------------------------------------

def test_mamba_has_no_kernel_level():
    status, reason, _ = runner.execute(SUITE, case(variant="mamba", level="kernel"))
    assert status == "unsupported" and "layer level" in reason


def test_nan_output_is_a_recorded_failure(monkeypatch):
    v = registry.get("vanilla")
    monkeypatch.setattr(v, "attention_fn", lambda q, k, v, causal=False: q * float("nan"))
    status, reason, metrics = runner.execute(SUITE, case())
    assert status == "nonfinite" and "NaN" in reason and metrics == {}


def test_oom_under_a_memory_cap_skips_larger_n_and_a_hang_is_stopped(tmp_path):
    # 96 MiB: N = 512 needs about 32 MiB of scores; glibc heap layout makes a tighter cap flaky
    capped = [case(seq_len=n, memory_cap_mb=96) for n in (128, 512, 4096, 8192)]
    hang = case(seq_len=512, mode="fwd_bwd", budget_ms=3_600_000)  # MAX_ROUNDS calls: far past the timeout
    after = case(seq_len=256)
    runner.run([*capped, hang, after], SUITE, tmp_path, timeout_s=5, progress=False)
    df = store.load(tmp_path).set_index("case_id")
    status = {c.seq_len: df.loc[c.case_id, "status"] for c in capped}
    assert status == {128: "ok", 512: "ok", 4096: "oom", 8192: "skipped"}
    assert "MemoryError" in df.loc[capped[2].case_id, "reason"]
    assert df.loc[hang.case_id, "status"] == "timeout"
    assert df.loc[after.case_id, "status"] == "ok"  # the sweep goes on, memory freed, worker replaced


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    cases = [case(seq_len=n, budget_ms=300) for n in (64, 128, 256, 512, 1024, 2048)]
    script = textwrap.dedent(f"""
        from harness import runner
        from tests.test_throughput import case
        cases = [case(seq_len=n, budget_ms=300) for n in (64, 128, 256, 512, 1024, 2048)]
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


def test_bad_arguments_exit_2_with_one_line(tmp_path):
    bad = {
        "unknown variant": ["--device", "cpu", "-v", "nope"],
        "--seq-len must be between 1 and": ["--device", "cpu", "-n", "0"],
        "float16 is not a throughput dtype on cpu": ["--device", "cpu", "--dtype", "fp16"],
    }
    procs = {message: attnbench(*args, "--out", str(tmp_path / "x")) for message, args in bad.items()}
    for message, proc in procs.items():  # started together: the interpreters load in parallel
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_cli_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "run"
    proc = attnbench("--device", "cpu", "-v", "vanilla", "-v", "linear", "-n", "128", "--out", str(out),
                     "--no-progress")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    df = store.load(out)
    assert len(df) == 2 * len(tp.LEVELS) * len(tp.MODES) and (df.status == "ok").all(), df.reason.tolist()
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
        fields = {k: row[k] for k in tp.Case.model_fields if k in row}  # the loader drops all-null columns
        fields["params"] = json.loads(fields["params"])
        assert tp.Case(**fields).case_id == row["case_id"]
        assert row["schema_version"] == store.SCHEMA_VERSION


def test_summary_reports_the_largest_feasible_n():
    rows = pd.DataFrame({
        "suite": "throughput", "variant": "vanilla", "level": "kernel", "mode": "fwd",
        "seq_len": [512, 1024, 2048, 4096], "status": ["ok", "ok", "oom", "skipped"],
        "device_name": "GPU",
    })
    assert tp.largest_feasible(rows) == {("vanilla", "kernel", "fwd"): (1024, 2048)}


def test_summarize_prints_a_table_of_a_run(tmp_path):
    run = store.RunStore(tmp_path)
    run.open({"device": "cpu", "device_name": "CPU"})
    for c, status in ((case(seq_len=256), "ok"), (case(seq_len=512), "oom"), (case(mode="decode"), "ok")):
        run.write({"case_id": c.case_id, **c.flat(), "status": status, "reason": "", "device_name": "CPU"})
    console = Console(file=StringIO(), width=200)
    tp.summarize(tmp_path, console)
    lines = console.file.getvalue().splitlines()
    assert any("vanilla" in line and "kernel" in line and "256 (oom 512)" in line and "128" in line
               for line in lines)


# --- pytest-benchmark route ---------------------------------------------------------------------------

def test_pytest_benchmark_json_converts_to_store_rows(tmp_path):
    report = tmp_path / "bench.json"
    environment = {**os.environ, "ATTNBENCH_DEVICE": "cpu", "ATTNBENCH_VARIANTS": "vanilla,linear",
                   "ATTNBENCH_SEQ_LENS": "128"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "suites/bench_throughput.py",
         "-k", "kernel and not fwd_bwd", f"--benchmark-json={report}"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    raw = json.loads(report.read_text())
    rows = tp.rows_from_benchmark_json(report)
    planned = {c.case_id: c for c in tp.plan("quick", "cpu", variants=["vanilla", "linear"], seq_lens=[128])
               if c.level == "kernel" and c.mode != "fwd_bwd"}
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
