"""Small synthetic results sets whose answers are known, written through the real results store.

No tests here: the report and recommend tests build on these. Latencies follow simple laws so that
exponents, crossovers and rankings can be worked out by hand:
  vanilla      1e-3 N ms            (runs out of memory at 16384 forward, at 8192 forward+backward)
  flash-sdpa   0.25e-3 N + 0.5 ms
  linear       2 + 1e-5 N ms         (no FLOP count: not a softmax kernel)
  sparse-bigbird 0.5e-3 N + 0.2 ms   (forward only; backward unsupported)
  performer    unsupported everywhere (throughput), trained on the learned tasks
forward+backward = 3 x forward; non-causal = 1.2 x causal for softmax families.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import typer

from harness import cli
from harness.report import build
from harness.report.data import GIB, Results
from harness.store import RunStore
from tests.conftest import SCRATCH_ENV

T = TypeVar("T")
DEVICE_NAME = "NVIDIA H100 80GB HBM3"
SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
TOTAL_TOKENS = 16384
HEADS, HEAD_DIM = 16, 64
PEAK_TFLOPS = 800.0
POWER_W = 400.0
FAMILY = {"vanilla": "vanilla", "flash-sdpa": "flash", "linear": "linear", "sparse-bigbird": "sparse",
          "performer": "performer"}
SOFTMAX_DENSITY = {"vanilla": 1.0, "flash-sdpa": 1.0, "sparse-bigbird": 0.2}
THROUGHPUT_VARIANTS = ("vanilla", "flash-sdpa", "linear", "sparse-bigbird", "performer")

# Learned tasks: accuracy at the best learning rate (the other rate scores BEST_LR_MARGIN less).
BEST_LR_MARGIN = 0.2
LEARNED = {  # variant -> task -> (best lr, accuracy at it)
    "vanilla": {"mqar": (3e-3, 0.98), "selective_copy": (3e-3, 0.94)},
    "flash-sdpa": {"mqar": (3e-3, 0.96), "selective_copy": (1e-3, 0.92)},
    "sparse-bigbird": {"mqar": (1e-3, 0.84), "selective_copy": (1e-3, 0.70)},
    "linear": {"mqar": (3e-3, 0.40), "selective_copy": (1e-3, 0.50)},
    "performer": {"mqar": (1e-3, 0.36), "selective_copy": (3e-3, 0.44)},
}
LRS = (1e-3, 3e-3)
PASSKEY_LENS = (1024, 4096)
PASSKEY_DEPTHS = (0.0, 0.5, 1.0)
PASSKEY_BEST_LR = 3e-3


def passkey_accuracy(variant: str, seq_len: int, depth: float) -> float:
    """At the best rate: exact attention finds the key anywhere; linear forgets early keys at 4096."""
    if variant == "linear" and seq_len > 1024:
        return round(0.4 + 0.6 * depth, 3)
    return {"vanilla": 1.0, "flash-sdpa": 1.0, "sparse-bigbird": 0.9, "linear": 0.8,
            "performer": 0.7}[variant]


def forward_latency_ms(variant: str, n: int, causal: bool = True) -> float:
    base = {"vanilla": 1e-3 * n, "flash-sdpa": 0.25e-3 * n + 0.5, "linear": 2.0 + 1e-5 * n,
            "sparse-bigbird": 0.5e-3 * n + 0.2}[variant]
    return base * (1.0 if causal or variant not in SOFTMAX_DENSITY else 1.2)


def memory_gib(variant: str, n: int) -> float:
    return {"vanilla": 2.0 * n / 1024, "flash-sdpa": 0.25 + 0.01 * n / 1024, "linear": 0.5,
            "sparse-bigbird": 1.0}[variant]


def case_id(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def row(config: dict, status: str = "ok", reason: str = "", **metrics) -> dict:
    return {"case_id": case_id(config), **config, "status": status, "reason": reason, **metrics,
            "family": FAMILY[config["variant"]], "exact": config["variant"] in ("vanilla", "flash-sdpa"),
            "baseline": config["variant"] == "vanilla", "default_models": "",
            "device_name": DEVICE_NAME, "driver": "550.54", "cuda": "12.4", "torch": "2.13.0",
            "commit": "abc123", "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:00:01+00:00"}


def throughput_status(variant: str, mode: str, n: int) -> tuple[str, str]:
    if variant == "performer":
        return "unsupported", "performer: bfloat16 kernels not built for this device"
    if variant == "sparse-bigbird" and mode == "fwd_bwd":
        return "unsupported", "backward not implemented for the block-sparse kernel"
    if variant == "vanilla" and mode != "decode":
        oom_at = 16384 if mode == "fwd" else 8192
        if n == oom_at:
            return "oom", "OutOfMemoryError: CUDA out of memory. Tried to allocate 32.00 GiB"
        if n > oom_at:
            return "skipped", f"larger than {oom_at}, which ran out of memory"
    return "ok", ""


def throughput_metrics(variant: str, mode: str, n: int, causal: bool, slowdown: float) -> dict:
    batch = 1 if mode == "decode" else TOTAL_TOKENS // n
    if mode == "decode":
        latency = {"vanilla": 0.05 + 1e-5 * n, "flash-sdpa": 0.03 + 2e-6 * n, "linear": 0.04}[variant]
        tokens = batch
    else:
        latency = forward_latency_ms(variant, n, causal) * (3.0 if mode == "fwd_bwd" else 1.0)
        tokens = TOTAL_TOKENS
    latency *= slowdown
    memory = memory_gib(variant, n) * (3.0 if mode == "fwd_bwd" else 1.0) * GIB
    metrics = {"latency_ms": latency, "latency_ms_p20": latency * 0.97, "latency_ms_p80": latency * 1.03,
               "rounds": 20, "tokens_per_s": tokens / (latency / 1e3), "flops": None, "tflops": None,
               "pct_of_peak": None, "peak_matmul_tflops": PEAK_TFLOPS, "mem_alloc_peak_bytes": memory,
               "mem_reserved_peak_bytes": memory * 1.1, "nvml_mem_used_bytes": memory * 1.2,
               "device_mem_total_bytes": 80 * GIB, "power_w_mean": POWER_W,
               "energy_j_per_token": POWER_W * latency / 1e3 / tokens, "sm_clock_mhz_mean": 1755.0,
               "temperature_c_max": 61.0, "throttled": False}
    if variant in SOFTMAX_DENSITY and mode != "decode":
        flops = 4 * batch * HEADS * n * n * HEAD_DIM * SOFTMAX_DENSITY[variant] * (0.5 if causal else 1.0)
        flops *= 3.5 if mode == "fwd_bwd" else 1.0
        tflops = flops / (latency / 1e3) / 1e12
        metrics.update(flops=flops, tflops=tflops, pct_of_peak=100 * tflops / PEAK_TFLOPS)
    return metrics


def throughput_rows(slowdown: dict[str, float] | None = None) -> list[dict]:
    """Causal bf16 forward and forward+backward of every variant; non-causal forward; decode; fp32."""
    grid = [("fwd", True, "bfloat16"), ("fwd_bwd", True, "bfloat16"), ("fwd", False, "bfloat16"),
            ("decode", True, "bfloat16"), ("fwd", True, "float32")]
    rows = []
    for mode, causal, dtype in grid:
        names = ("vanilla", "flash-sdpa", "linear") if mode == "decode" or dtype == "float32" else \
            THROUGHPUT_VARIANTS
        for variant in names:
            for n in SEQ_LENS:
                config = {"suite": "throughput", "variant": variant, "device": "cuda", "dtype": dtype,
                          "params": "{}", "mode": mode, "level": "kernel",
                          "batch": 1 if mode == "decode" else TOTAL_TOKENS // n, "seq_len": n,
                          "n_heads": HEADS, "head_dim": HEAD_DIM, "causal": causal,
                          "total_tokens": TOTAL_TOKENS}
                status, reason = throughput_status(variant, mode, n)
                metrics = {} if status != "ok" else throughput_metrics(
                    variant, mode, n, causal, (slowdown or {}).get(variant, 1.0))
                backend = "math" if status == "ok" else None
                rows.append(row(config, status, reason, backend=backend, **metrics))
    return rows


def learned_config(suite, variant, task, seq_len, lr, **extra) -> dict:
    return {"suite": suite, "variant": variant, "device": "cuda", "dtype": "bfloat16", "params": "{}",
            "task": task, "seq_len": seq_len, "train_seq_len": extra.pop("train_seq_len", seq_len),
            "d_model": 64, "n_layers": 2, "kv_pairs": extra.pop("kv_pairs", None), "depth": extra.pop(
                "depth", None), "lr": lr, "seed": extra.pop("seed", 0), "max_steps": 200, **extra}


def learned_metrics(accuracy: float) -> dict:
    return {"accuracy": accuracy, "final_loss": 1.0 - accuracy, "loss_curve": [2.0, 1.5, 1.0 - accuracy],
            "converged": accuracy > 0.9, "steps": 200, "wall_s": 3.0, "tokens_seen": 51200, "n_params": 70000}


def accuracy_rows() -> list[dict]:
    """Exactness (Part A) and two learned tasks with a two-rate sweep and two seeds (Part B)."""
    rows = []
    rel_err = {"vanilla": 1e-7, "flash-sdpa": 3e-3, "sparse-bigbird": 2e-3, "linear": 0.4, "performer": 0.2}
    for variant, err in rel_err.items():
        for kind, factor in (("random", 1.0), ("peaked", 4.0)):
            config = {"suite": "accuracy", "variant": variant, "device": "cuda", "dtype": "bfloat16",
                      "params": "{}", "task": "exactness", "input_kind": kind, "seq_len": 256,
                      "head_dim": 64, "causal": True}
            rows.append(row(config, rel_err=err * factor, max_abs_err=err * factor * 3,
                            reference="masked_softmax" if variant == "sparse-bigbird" else "softmax"))
    for variant, tasks in LEARNED.items():
        for task, (best, accuracy) in tasks.items():
            for lr in LRS:
                for seed, jitter in ((0, -0.01), (1, 0.01)):  # seeds average to the stated accuracy
                    value = accuracy + jitter - (0.0 if lr == best else BEST_LR_MARGIN)
                    config = learned_config("accuracy", variant, task, 256, lr, seed=seed,
                                            kv_pairs=16 if task == "mqar" else None)
                    rows.append(row(config, **learned_metrics(value)))
    return rows


def long_range_rows() -> list[dict]:
    """Passkey at two lengths and three depths; vanilla also tried at 16384 and ran out of memory."""
    rows = []
    for variant in LEARNED:
        for n in PASSKEY_LENS:
            for depth in PASSKEY_DEPTHS:
                for lr in LRS:
                    penalty = 0.0 if lr == PASSKEY_BEST_LR else 0.5
                    config = learned_config("long-range", variant, "passkey", n, lr, depth=depth,
                                            train_seq_len=1024)
                    rows.append(row(config, **learned_metrics(passkey_accuracy(variant, n, depth) - penalty)))
    config = learned_config("long-range", "vanilla", "passkey", 16384, PASSKEY_BEST_LR, depth=0.5,
                            train_seq_len=1024)
    rows.append(row(config, "oom", "OutOfMemoryError: CUDA out of memory"))
    return rows


def environment() -> dict:
    return {"device": "cuda", "device_name": DEVICE_NAME, "device_count": 1, "driver": "550.54",
            "cuda": "12.4", "torch": "2.13.0", "python": "3.11.7", "platform": "Linux", "hostname": "gpu-1",
            "commit": "abc123", "cpu_threads": 16}


def write_run(path, rows: list[dict], device_name: str = DEVICE_NAME):
    run = RunStore(path)
    run.open({**environment(), "device_name": device_name})
    for r in rows:
        run.write({**r, "device_name": device_name})
    return path


def full_run(path, slowdown: dict[str, float] | None = None):
    """Every suite: what `nox -s bench` leaves behind."""
    return write_run(path, throughput_rows(slowdown) + accuracy_rows() + long_range_rows())


# Built once per test session (each build writes and reads a few hundred files; the report's takes 15-20 s,
# most of it drawing its charts), shared by the report, browser and recommend tests and by the pytest-xdist
# workers: conftest.py names one scratch directory for the session (SCRATCH_ENV) before the workers start,
# and the first worker to ask for a result builds it there while the others wait on its lock and then read
# it. Outside pytest, a directory of this process's own.
_ROOT: list[Path] = []


def _scratch() -> Path:
    if not _ROOT:
        shared = os.environ.get(SCRATCH_ENV)
        _ROOT.append(Path(shared) if shared else Path(tempfile.mkdtemp(prefix="attnbench-report-tests-")))
        if not shared:
            atexit.register(shutil.rmtree, _ROOT[0], True)
    return _ROOT[0]


def built_once(name: str, make: Callable[[Path], T]) -> T:
    """make(scratch/NAME), once in the session whichever worker asks first; the others get a copy (pickled
    beside it). A lock file per name: a build may ask for another (the report for its run)."""
    root = _scratch()
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = root / f"{name}.pickle"
        if done.exists():
            return pickle.loads(done.read_bytes())
        made = make(root / name)
        partial = done.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(made))
        partial.replace(done)
        return made


@functools.cache
def full_dir() -> Path:
    return built_once("run", full_run)


@functools.cache
def baseline_dir() -> Path:
    """The throughput of the same run with flash-sdpa 10% faster and linear 3% faster: 10% is a
    regression, 3% is not."""
    return built_once("baseline", lambda path: write_run(path, throughput_rows({"flash-sdpa": 1 / 1.10,
                                                                                 "linear": 1 / 1.03})))


@functools.cache
def full_rows():
    return Results.load(full_dir()).rows


@functools.cache
def built_report():
    """The report of the full run against the baseline (charts saved, HTML and Markdown written)."""
    return built_once("report", lambda path: build([full_dir()], path, baseline=baseline_dir()))


BUILD_COMMAND = typer.main.get_command
_COMMANDS: dict[int, tuple[typer.Typer, object]] = {}


def command_of(app: typer.Typer):
    """The app's click commands, built once. typer builds them anew from the signatures at every call of
    the app (30-60 ms, more than most commands take here); what they are built from (the signatures, the
    help) is fixed once the app is imported."""
    if id(app) not in _COMMANDS:
        _COMMANDS[id(app)] = (app, BUILD_COMMAND(app))  # the app kept: its id stays its own
    return _COMMANDS[id(app)][1]


def run_cli(monkeypatch, capsys, *args, main=None):
    """Run the attnbench command line in-process (`main`: harness.cli's unless given): (exit code, stdout,
    stderr)."""
    monkeypatch.setattr(sys, "argv", ["attnbench", *map(str, args)])
    monkeypatch.setattr(typer.main, "get_command", command_of)
    with pytest.raises(SystemExit) as exit_info:
        (main or cli.main)()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
