"""Throughput and memory: latency, tokens/s, TFLOP/s, memory, power and energy of every variant.

Modes: `fwd` (inference forward), `fwd_bwd` (forward + backward), `decode` (one new token against a
context of N: a KV cache for attention families, the recurrent state for the others, through the
registry's prefill/decode and the mixers' prefill/step). Levels: `kernel` (attention(q, k, v); mamba
has none and is recorded "unsupported") and `layer` (the mixer with its projections). No variant is
captured in a CUDA graph: launch overhead counts alike for every one.

Sequence sweeps keep the total tokens constant: batch = max(1, total_tokens // N).

Timing is pytest-benchmark's pedantic loop (harness.timing) in both entry points: `attnbench run
--suite throughput` builds the fixture itself in `run_case`; `pytest suites/bench_throughput.py
--benchmark-json=F` gets it from pytest, and `import_benchmark_json(F, out)` turns that JSON into
rows of the results store. Both derive the row from the same benchmark record (`metrics_from_benchmark`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from harness import compiling, env, flops, memory, registry, store, telemetry, timing
from harness.config import Case as BaseCase
from harness.registry import Unsupported, as_dtype, dtype_name
from harness.runner import check_finite

TIMEOUT_S = 300.0  # per case: the first call may compile FlexAttention or autotune a Triton kernel
MODES = ("fwd", "fwd_bwd", "decode")
LEVELS = ("kernel", "layer")
DEVICE_DTYPES = {"cpu": ("float32",), "cuda": ("bfloat16", "float16", "float32")}
PEAK_MATMUL = {"cuda": (torch.bfloat16, 8192), "cpu": (torch.float32, 1024)}  # dtype, size
PEAK_BUDGET_MS = 200.0
RUN_DIR_ENV = "ATTNBENCH_RUN_DIR"  # where the peak matmul figure is cached for the run
PEAK_FILE = "peak_matmul.json"


def powers_of_two(low: int, high: int) -> tuple[int, ...]:
    return tuple(2**e for e in range(low.bit_length() - 1, high.bit_length()))


@dataclass(frozen=True)
class Grid:
    """What a profile sweeps on a device."""

    kernel_seq_lens: tuple[int, ...]
    layer_seq_lens: tuple[int, ...]
    dtypes: tuple[str, ...]
    head_dims: tuple[int, ...]
    causal: tuple[bool, ...]
    width: int  # n_heads * head_dim (d_model at layer level)
    total_tokens: int
    budget_ms: float  # timed rounds
    warmup_ms: float
    energy_ms: float  # back-to-back calls under NVML's energy counter (CUDA only)


GRIDS = {
    ("cuda", "quick"): Grid((1024, 8192), (4096,), ("bfloat16",), (64,), (True,), 2048, 16384, 50, 25, 100),
    ("cuda", "standard"): Grid((512, 2048, 8192, 32768, 131072), (2048, 16384), ("bfloat16",), (64,), (True,),
                               2048, 16384, 100, 25, 200),
    ("cuda", "full"): Grid(powers_of_two(512, 131072), powers_of_two(512, 131072), ("bfloat16", "float16"),
                           (64, 128), (True, False), 2048, 16384, 200, 50, 200),
    ("cpu", "quick"): Grid((128, 512), (128, 512), ("float32",), (64,), (True,), 256, 1024, 30, 0, 0),
    ("cpu", "standard"): Grid(powers_of_two(128, 4096), (256, 1024, 4096), ("float32",), (64,), (True,),
                              256, 4096, 100, 0, 0),
    ("cpu", "full"): Grid(powers_of_two(128, 4096), powers_of_two(128, 4096), ("float32",), (64, 128),
                          (True, False), 256, 4096, 200, 0, 0),
}


def batch_for(total_tokens: int, seq_len: int) -> int:
    return max(1, total_tokens // seq_len)


class Case(BaseCase):
    suite: str = "throughput"
    mode: Literal["fwd", "fwd_bwd", "decode"]
    level: Literal["kernel", "layer"]
    seq_len: PositiveInt  # N: the context of a decode step
    batch: PositiveInt
    total_tokens: PositiveInt
    n_heads: PositiveInt
    head_dim: PositiveInt
    causal: bool = True
    budget_ms: PositiveFloat = 100.0
    warmup_ms: NonNegativeFloat = 25.0
    energy_ms: NonNegativeFloat = 0.0
    memory_cap_mb: PositiveInt | None = None  # simulate a smaller device (see harness.memory)

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if self.batch != batch_for(self.total_tokens, self.seq_len):
            raise ValueError(f"batch must be max(1, total_tokens // seq_len) = "
                             f"{batch_for(self.total_tokens, self.seq_len)}, got {self.batch}")
        if self.mode == "decode" and not self.causal:
            raise ValueError("decode is causal: a new token attends to the context before it")
        return self

    @property
    def d_model(self) -> int:
        return self.n_heads * self.head_dim

    def oom_key(self) -> tuple[str, int]:
        """Group: everything but the length (and the batch that follows from it); size: the length."""
        group = self.model_dump(mode="json", exclude={"seq_len", "batch"})
        return json.dumps(group, sort_keys=True), self.seq_len

    def describe(self) -> str:
        shape = f"N={self.seq_len} B={self.batch} hd={self.head_dim} {self.dtype}"
        return f"{self.variant} {self.level} {self.mode} {shape}" + ("" if self.causal else " full")

    def slug(self) -> str:
        """A test id: variant-level-mode-N-dtype-hd-mask."""
        mask = "causal" if self.causal else "full"
        shape = f"N{self.seq_len}-{self.dtype}-hd{self.head_dim}-{mask}"
        return f"{self.variant}-{self.level}-{self.mode}-{shape}"

# --- planning ---------------------------------------------------------------------------------------

def _dtypes(device: str, requested: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    names = [dtype_name(as_dtype(d)) for d in requested] if requested else list(default)
    for name in names:
        if name not in DEVICE_DTYPES[device]:
            raise ValueError(f"{name} is not a throughput dtype on {device}; "
                             f"use {', '.join(DEVICE_DTYPES[device])}")
    if device == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported(False):
        if requested and "bfloat16" in names:
            raise ValueError(f"bfloat16 is not supported by {torch.cuda.get_device_name()}; use --dtype fp16")
        names = [n for n in names if n != "bfloat16"] or ["float16"]
    return names


def plan(profile: str, device: str, variants: Sequence[str] | None = None,
         seq_lens: Sequence[int] | None = None, dtypes: Sequence[str] | None = None) -> list[Case]:
    """Every case of a profile on a device, smallest N first within each group (for OOM skipping)."""
    if (device, profile) not in GRIDS:
        raise ValueError(f"no throughput profile {profile!r} on {device!r}; "
                         f"profiles: quick, standard, full; devices: cpu, cuda")
    grid = GRIDS[device, profile]
    names = list(variants) if variants else registry.names()
    for name in names:
        registry.get(name)  # ValueError naming the valid variants
    if seq_lens is not None and any(n <= 0 for n in seq_lens):
        raise ValueError(f"sequence lengths must be positive, got {min(seq_lens)}")
    cases = []
    for name in names:
        for dtype in _dtypes(device, dtypes, grid.dtypes):
            for head_dim in grid.head_dims:
                for level in LEVELS:
                    lengths = seq_lens or (grid.kernel_seq_lens if level == "kernel" else grid.layer_seq_lens)
                    for mode in MODES:
                        for causal in grid.causal:
                            if mode == "decode" and not causal:
                                continue
                            cases += [_case(grid, name, device, dtype, head_dim, level, mode, causal, n)
                                      for n in sorted(set(lengths))]
    return cases


def _case(grid: Grid, variant, device, dtype, head_dim, level, mode, causal, seq_len) -> Case:
    return Case(variant=variant, device=device, dtype=dtype, mode=mode, level=level, seq_len=seq_len,
                batch=batch_for(grid.total_tokens, seq_len), total_tokens=grid.total_tokens,
                n_heads=grid.width // head_dim, head_dim=head_dim, causal=causal, budget_ms=grid.budget_ms,
                warmup_ms=grid.warmup_ms, energy_ms=grid.energy_ms)


# Rough seconds per case beyond its warm-up, timed rounds and energy phase (inputs, the memory pass, cache
# flushes, the row): the CPU figure from the quick profile here (156 cases in 12 s); CUDA a guess.
CASE_OVERHEAD_S = {"cpu": 0.05, "cuda": 0.5}
FLEX_COMPILE_S = 15.0  # torch.compile of a FlexAttention kernel for a new shape, CUDA only (a guess)


def case_cost(case: Case) -> float:
    """Estimated seconds of one case, for `attnbench run --shard` to balance its parts."""
    seconds = (case.warmup_ms + case.budget_ms + case.energy_ms) / 1000 + CASE_OVERHEAD_S[case.device]
    if case.device == "cuda" and registry.get(case.variant).backend_for("cuda").startswith("flex"):
        seconds += FLEX_COMPILE_S
    return seconds


# --- workloads --------------------------------------------------------------------------------------

@dataclass
class Workload:
    """One timed call and what it does: `reset` runs in each round's setup (untimed)."""

    call: Callable[[], torch.Tensor]
    reset: Callable[[], None]
    leaves: list[torch.Tensor]  # inputs whose gradients a fwd_bwd call produces
    tokens: int  # tokens processed per call (new tokens in decode)
    flops: int | None


def _no_reset() -> None:
    pass


def _training_call(forward: Callable[[], torch.Tensor], grad_out: torch.Tensor) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        out = forward()
        out.backward(grad_out)
        return out

    return call


def _clear_grads(tensors: list[torch.Tensor]) -> Callable[[], None]:
    def reset() -> None:
        for t in tensors:
            t.grad = None

    return reset


def _inference(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    return torch.no_grad()(fn)


def check_level(case: Case) -> None:
    if case.level == "kernel" and registry.get(case.variant).attention_fn is None:
        raise Unsupported(f"{case.variant} has no attention(q, k, v) kernel; it competes at the layer level")


def kernel_workload(case: Case) -> Workload:
    v = registry.get(case.variant)
    b, h, n, d = case.batch, case.n_heads, case.seq_len, case.head_dim

    def make(length: int, grad: bool = False) -> torch.Tensor:
        t = torch.randn(b, h, length, d, device=case.device, dtype=case.torch_dtype)
        return t.requires_grad_(grad)

    def count(n_q: int, n_k: int) -> int | None:
        return v.attention_flops(case.mode, b, h, d, n_q, n_k, case.causal, case.params)

    if case.mode == "decode":
        with torch.no_grad():
            state = v.prefill(make(n), make(n), capacity=n + 1, **case.params)
        q, k, vv = make(1), make(1), make(1)
        # The returned state is dropped: every round decodes token N + 1 against the same context.
        call = _inference(lambda: v.decode(q, k, vv, state, **case.params)[0])
        return Workload(call, _no_reset, [], b, count(1, n + 1))
    grad = case.mode == "fwd_bwd"
    q, k, vv = make(n, grad), make(n, grad), make(n, grad)
    forward = lambda: v.attention(q, k, vv, causal=case.causal, **case.params)  # noqa: E731
    if grad:
        leaves = [q, k, vv]
        return Workload(_training_call(forward, torch.randn_like(q)), _clear_grads(leaves), leaves, b * n,
                        count(n, n))
    return Workload(_inference(forward), _no_reset, [], b * n, count(n, n))


def layer_workload(case: Case) -> Workload:
    v = registry.get(case.variant)
    b, n, d_model = case.batch, case.seq_len, case.d_model
    mixer = v.mixer(d_model, case.n_heads, causal=case.causal, **case.params)
    mixer = mixer.to(device=case.device, dtype=case.torch_dtype)
    x = torch.randn(b, n, d_model, device=case.device, dtype=case.torch_dtype)

    def count(n_q: int, n_k: int, tokens: int) -> int | None:
        attention = v.attention_flops(case.mode, b, case.n_heads, case.head_dim, n_q, n_k, case.causal,
                                          case.params)
        return None if attention is None else attention + flops.projection_flops(case.mode, tokens, d_model)

    if case.mode == "decode":
        with torch.no_grad():
            _, state = mixer.prefill(x, capacity=n + 1)
        x_new = torch.randn(b, 1, d_model, device=case.device, dtype=case.torch_dtype)
        # As at kernel level; a state updated in place (mamba's) moves on, at the same cost per step.
        call = _inference(lambda: mixer.step(x_new, state)[0])
        return Workload(call, _no_reset, [], b, count(1, n + 1, b))
    if case.mode == "fwd_bwd":
        x.requires_grad_(True)
        leaves = [x, *mixer.parameters()]
        return Workload(_training_call(lambda: mixer(x), torch.randn_like(x)), _clear_grads(leaves), leaves,
                        b * n, count(n, n, b * n))
    return Workload(_inference(lambda: mixer(x)), _no_reset, [], b * n, count(n, n, b * n))


def build_workload(case: Case) -> Workload:
    """The case's call; measure_case has already checked its level (check_level)."""
    return kernel_workload(case) if case.level == "kernel" else layer_workload(case)


# --- measuring --------------------------------------------------------------------------------------

def peak_matmul_tflops(device: str) -> float:
    """The device's matmul peak (bf16 on CUDA, fp32 on CPU), measured once per run.

    Cached in the run directory named by $ATTNBENCH_RUN_DIR when set (the runner's worker), else once
    per process.
    """
    run_dir = os.environ.get(RUN_DIR_ENV)
    return _peak_matmul_tflops(device, env.device_name(device), run_dir)


@functools.cache
def _peak_matmul_tflops(device: str, device_name: str, run_dir: str | None) -> float:
    dtype, size = PEAK_MATMUL[torch.device(device).type]
    key = f"{device_name} {dtype_name(dtype)} {size}^3"
    path = Path(run_dir) / PEAK_FILE if run_dir else None
    cached = store.read_json_cache(path) if path else {}  # a corrupt file is moved aside and re-measured
    if not isinstance(cached.get(key), (int, float)) or not math.isfinite(cached[key]) or cached[key] <= 0:
        cached[key] = timing.matmul_peak_tflops(device, dtype, size, PEAK_BUDGET_MS)
        if path:
            store.write_json(path, cached)
    return cached[key]


def _energy_phase(work: Workload, gpu: telemetry.GpuTelemetry | None, case: Case, estimate_ms: float):
    """Back-to-back calls (no flush) under NVML's energy counter: mean power and energy per token."""
    empty = {"power_w_mean": None, "energy_j_per_token": None}
    if gpu is None or case.energy_ms <= 0:
        return empty
    calls = max(1, math.ceil(case.energy_ms / max(estimate_ms, 1e-6)))
    timing.synchronize(case.device)
    start_mj, started = gpu.energy_mj(), time.perf_counter()
    for _ in range(calls):
        work.reset()
        work.call()
    timing.synchronize(case.device)
    end_mj, seconds = gpu.energy_mj(), time.perf_counter() - started
    if start_mj is None or end_mj is None or end_mj <= start_mj:
        return empty  # no counter, or it did not tick within the phase
    joules = (end_mj - start_mj) / 1e3
    return {"power_w_mean": joules / seconds, "energy_j_per_token": joules / (calls * work.tokens)}


def measure_case(case: Case, benchmark) -> None:
    """Measure one case into `benchmark`, a pytest-benchmark fixture (from pytest or make_fixture).

    Its stats hold the timed rounds; every other figure goes into its extra_info. Order: peak matmul
    (cached), build, warm-up (compile, autotune), one timed call under fresh peak-memory stats (checked
    for NaN/Inf, sizes the number of rounds), the timed rounds with an L2 flush in each setup, then the
    energy phase (NVML samples taken then, not during the timed rounds).
    """
    started = env.now()
    check_level(case)  # before the peak matmul, which an unsupported case does not need
    peak = peak_matmul_tflops(case.device)
    compiling.allow_recompiles(case.device, reset=True)
    gpu = telemetry.GpuTelemetry.open(case.device)
    try:
        with memory.memory_cap(case.device, case.memory_cap_mb):
            work = build_workload(case)
            compiled = compiling.counts()
            warmup_calls, first_call_ms = timing.warm_up(work.call, work.reset, case.device,
                                                         case.warmup_ms)
            if compiling.fallback_since(compiled):
                raise compiling.EagerFallback("a compiled kernel ran eagerly in the warm-up (dynamo's "
                                              "recompile limit was reached): not timed")
            compiled = compiling.counts()
            memory.reset_peaks(case.device)  # the steady-state call: memory, NaN check, round planning
            work.reset()
            out, estimate_ms = timing.timed_call(work.call, case.device)
            figures = memory.read_peaks(case.device)
            check_finite(case.variant, out, *(t.grad for t in work.leaves if t.grad is not None))
            del out
            flush = timing.L2Flush(case.device)

            def setup() -> None:
                work.reset()
                flush()

            rounds = timing.rounds_for(case.budget_ms, estimate_ms)
            timing.time_rounds(benchmark, work.call, setup, rounds)
            with telemetry.sampler(gpu) as sampler:  # never during the timed rounds
                figures |= _energy_phase(work, gpu, case, estimate_ms)
            used, total = gpu.memory() if gpu else (None, None)
            figures["eager_fallback"] = compiling.fallback_since(compiled)
    finally:
        if gpu:
            gpu.close()
    benchmark.extra_info.update({
        "case": case.model_dump(mode="json"),
        "environment": env.describe(case.device),
        "tokens_per_call": work.tokens, "flops": work.flops, "peak_matmul_tflops": peak,
        **figures, "nvml_mem_used_bytes": used, "device_mem_total_bytes": total,
        **telemetry.summarize(sampler.samples, sampler.reasons),
        "first_call_ms": first_call_ms, "warmup_calls": warmup_calls, "l2_flush_bytes": flush.nbytes,
        "timer": timing.timer_for(case.device).__name__, "started_at": started, "finished_at": env.now(),
    })


# Figures measure_case leaves in extra_info that become row columns as they are.
FIGURES = (
    "flops", "peak_matmul_tflops", "mem_alloc_peak_bytes", "mem_reserved_peak_bytes", "nvml_mem_used_bytes",
    "device_mem_total_bytes", "power_w_mean", "energy_j_per_token", "sm_clock_mhz_mean", "temperature_c_max",
    "throttled", "throttle_reasons", "first_call_ms", "warmup_calls", "l2_flush_bytes", "timer",
    "eager_fallback", "telemetry_reason",
)


def metrics_from_benchmark(bench: dict[str, Any]) -> dict[str, Any]:
    """Metric columns of a row from one pytest-benchmark record (an entry of its JSON 'benchmarks')."""
    info = bench["extra_info"]
    latency = timing.latency_summary(bench["stats"])
    seconds = latency["latency_ms"] / 1e3
    tflops = info["flops"] / seconds / 1e12 if info["flops"] else None
    return {
        **latency,
        "tokens_per_s": info["tokens_per_call"] / seconds,
        "tflops": tflops,
        "pct_of_peak": 100 * tflops / info["peak_matmul_tflops"] if tflops else None,
        **{k: info[k] for k in FIGURES},
    }


def run_case(case: Case) -> dict[str, Any]:
    """The runner's entry point: the pedantic loop on a fixture made here, then the same conversion."""
    fixture = timing.make_fixture(case.slug(), timing.timer_for(case.device))
    measure_case(case, fixture)
    return metrics_from_benchmark(fixture.stats.as_dict())


# --- pytest-benchmark JSON -> results store ---------------------------------------------------------

def rows_from_benchmark_json(path: str | Path) -> list[dict[str, Any]]:
    """Rows of the results store from a `pytest suites/bench_throughput.py --benchmark-json=PATH` file."""
    return _rows_from_benchmark_report(json.loads(Path(path).read_text()))


def _rows_from_benchmark_report(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        case = Case(**info["case"])
        rows.append({
            "case_id": case.case_id, **case.flat(), "status": "ok", "reason": "",
            **metrics_from_benchmark(bench),
            **env.row_fields(info["environment"]),
            "started_at": info["started_at"], "finished_at": info["finished_at"],
        })
    return rows


def import_benchmark_json(path: str | Path, out: str | Path) -> int:
    """Write the rows of a pytest-benchmark JSON file into run directory `out`; returns the row count."""
    report = json.loads(Path(path).read_text())
    if not report["benchmarks"]:
        return 0
    rows = _rows_from_benchmark_report(report)  # every row converts before anything is written
    run = store.RunStore(out)
    with run.lock():
        run.open(report["benchmarks"][0]["extra_info"]["environment"])
        for row in rows:
            run.write(row)
    return len(rows)


# --- summary ----------------------------------------------------------------------------------------

def largest_feasible(df) -> dict[tuple[str, str, str], tuple[int | None, int | None]]:
    """(variant, level, mode) -> (largest N that ran ok, smallest N that ran out of memory)."""
    found = {}
    for (variant, level, mode), group in df.groupby(["variant", "level", "mode"], sort=True):
        ok = group.loc[group.status == "ok", "seq_len"]
        oom = group.loc[group.status == "oom", "seq_len"]
        found[variant, level, mode] = (int(ok.max()) if len(ok) else None,
                                       int(oom.min()) if len(oom) else None)
    return found


def summarize(out_dir: str | Path, console) -> None:
    """Print each variant's largest N that ran on this device, per level and mode."""
    from rich.table import Table

    df = store.load(out_dir)
    df = df[df.suite == "throughput"] if "suite" in df else df.iloc[0:0]
    if df.empty:
        return
    found = largest_feasible(df)
    table = Table(title=f"largest N that ran on {df.device_name.iloc[0]} (oom: smallest N out of memory)")
    table.add_column("variant", no_wrap=True)
    table.add_column("level")
    for mode in MODES:
        table.add_column(mode, justify="right")
    for variant in sorted(df.variant.unique()):
        for level in LEVELS:
            cells = []
            for mode in MODES:
                ok, oom = found.get((variant, level, mode), (None, None))
                cells.append(("-" if ok is None else str(ok)) + ("" if oom is None else f" (oom {oom})"))
            table.add_row(variant, level, *cells)
    console.print(table)
