"""Throughput and memory: latency, tokens/s, TFLOP/s, memory, power and energy of every variant.

Modes: `fwd` (inference forward), `fwd_bwd` (forward + backward), `decode` (one new token against a
context of N: a KV cache for attention families, the recurrent state for the others, through the
registry's prefill/decode and the mixers' prefill/step). Levels: `kernel` (attention(q, k, v); mamba
has none and is recorded "unsupported") and `layer` (the mixer with its projections). No variant is
captured in a CUDA graph: launch overhead counts alike for every one.

Sequence sweeps keep the total tokens constant: batch = max(1, total_tokens // N) (beyond N =
total_tokens the batch is 1). Mamba's kernel level is its selective scan over n_heads * head_dim channels.

Each row carries its noise: the spread of its rounds (IQR / median), the confidence interval of its
median, and `noisy` when re-measuring did not bring that interval within +-2% (harness.timing). A case
whose whole measurement took longer than the grid's time cap stops the longer lengths of its group
(they are recorded `skipped` with the reason). Three kinds of case: `sweep` (the grid), `fidelity`
(a sweep point timed side by side by our loop and an independent timer) and `frontier` (one call of a
`--find-max-n` bisection under a memory cap: suites.frontier). What each profile sweeps: suites.grids.

Timing is pytest-benchmark's pedantic loop (harness.timing) in both entry points: `attnbench run
--suite throughput` builds the fixture itself in `run_case`; `pytest suites/bench_throughput.py
--benchmark-json=F` gets it from pytest, and `import_benchmark_json(F, out)` turns that JSON into
rows of the results store. Both derive the row from the same benchmark record (`metrics_from_benchmark`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from harness import compiling, env, flops, memory, registry, runner, store, telemetry, timing
from harness.config import Case as BaseCase
from harness.registry import Unsupported, as_dtype, dtype_name
from suites.grids import LEVELS, MODES, THROUGHPUT_GRIDS, Grid

DEFAULT_FRONTIER_TIME_CAP_S = 120.0
TIMEOUT_S = 300.0  # per case: the first call may compile FlexAttention or autotune a Triton kernel
DEVICE_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("bfloat16", "float16", "float32")}
PEAK_MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}  # n of the n^3 matmul whose rate is the peak
PEAK_BUDGET_MS = 200.0
NOISE_SPREAD_LIMIT = 0.05  # IQR / median above which a case is re-measured
NOISE_PRECISION = 0.02  # ... until its median's 95% interval is within +-2%
PEAK_FILE = "peak_matmul.json"


DENSE_MASK_BACKEND = "dense-masked-softmax"  # the backend name of a masked family's reference path


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
    kind: Literal["sweep", "fidelity", "frontier"] = "sweep"
    time_cap_ms: PositiveFloat | None = None  # a case slower than this stops the longer lengths of its group
    remeasure_ms: NonNegativeFloat = 0.0  # extra time to re-measure a case whose rounds spread widely

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

    def skip_reason(self, history: list[tuple[Case, str, dict[str, Any]]]) -> str | None:
        """Why this case is skipped, from the shorter lengths of its group run before it (the runner asks):
        one timed out; or one took longer than the time cap; or this one is predicted to
        (`predicted_wall_s` from the last two).
        """
        shorter = [(c, status, m) for c, status, m in history if c.seq_len < self.seq_len]
        timed_out = [c.seq_len for c, status, _ in shorter if status == "timeout"]
        if timed_out:
            return f"longer than N = {min(timed_out)}, which timed out"
        done = [(c, m) for c, status, m in shorter if status == "ok" and m.get("case_wall_ms") is not None]
        if self.time_cap_ms is None or not done:
            return None
        cap_s, (last, metrics) = self.time_cap_ms / 1e3, done[-1]
        took_s = metrics["case_wall_ms"] / 1e3
        if took_s > cap_s:
            return (f"longer than N = {last.seq_len}, whose measurement took {took_s:.1f} s "
                    f"(time cap {cap_s:g} s)")
        if len(done) < 2:
            return None
        predicted_s = predicted_wall_s(done[-2], done[-1], self)
        if predicted_s > cap_s:
            return (f"predicted to take {predicted_s:.0f} s from N = {done[-2][0].seq_len} and "
                    f"{last.seq_len} (time cap {cap_s:g} s)")
        return None

    def describe(self) -> str:
        shape = f"N={self.seq_len} B={self.batch} hd={self.head_dim} {self.dtype}"
        kind = "" if self.kind == "sweep" else f" [{self.kind}]"
        return f"{self.variant} {self.level} {self.mode} {shape}" + ("" if self.causal else " full") + kind

    def slug(self) -> str:
        """A test id: variant-level-mode-N-dtype-hd-mask."""
        mask = "causal" if self.causal else "full"
        shape = f"N{self.seq_len}-{self.dtype}-hd{self.head_dim}-{mask}"
        kind = "" if self.kind == "sweep" else f"-{self.kind}"
        return f"{self.variant}-{self.level}-{self.mode}-{shape}{kind}"

def predicted_wall_s(before: tuple[Case, dict], last: tuple[Case, dict], case: Case) -> float:
    """The wall time of `case` from two shorter cases of its group ((case, metrics) each, metrics with
    `case_wall_ms`): time per sequence (wall / batch) ~ N^k, k from the two, at least 1 (a sequence of
    N tokens costs at least N), times this case's batch."""
    (c0, m0), (c1, m1) = before, last
    t0, t1 = m0["case_wall_ms"] / c0.batch, m1["case_wall_ms"] / c1.batch
    k = max(math.log(t1 / t0) / math.log(c1.seq_len / c0.seq_len), 1.0) if t0 > 0 and t1 > 0 else 1.0
    return t1 * (case.seq_len / c1.seq_len) ** k * case.batch / 1e3


# --- planning ---------------------------------------------------------------------------------------

def cpu_bf16_supported() -> bool:
    """Whether this CPU has native bf16 matmuls (oneDNN's check: AVX512-BF16 or AMX); without them torch
    emulates bf16, which measures the emulation."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def checked_dtypes(device: str, requested: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """The dtypes to run: those requested (each a throughput dtype of the device, else ValueError), or the
    grid's default less those the device lacks (bf16 without native support)."""
    names = [dtype_name(as_dtype(d)) for d in requested] if requested else list(default)
    for name in names:
        if name not in DEVICE_DTYPES[device]:
            raise ValueError(f"{name} is not a throughput dtype on {device}; "
                             f"use {', '.join(DEVICE_DTYPES[device])}")
    if device == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported(False):
        if requested and "bfloat16" in names:
            raise ValueError(f"bfloat16 is not supported by {torch.cuda.get_device_name()}; use --dtype fp16")
        names = [n for n in names if n != "bfloat16"] or ["float16"]
    if device == "cpu" and not requested and not cpu_bf16_supported():
        names = [n for n in names if n != "bfloat16"] or ["float32"]  # a default grid skips emulated bf16
    return names


def plan(profile: str, device: str, variants: Sequence[str] | None = None,
         seq_lens: Sequence[int] | None = None, dtypes: Sequence[str] | None = None) -> list[Case]:
    """Every case of a profile on a device, smallest N first within each group (for OOM and time-cap
    skipping), then the grid's fidelity cases.

    `dtypes` runs every sweep of the grid in those dtypes (a grid may sweep its second dtype sparser);
    `seq_lens` replaces every sweep's lengths.
    """
    if (device, profile) not in THROUGHPUT_GRIDS:
        raise ValueError(f"no throughput profile {profile!r} on {device!r}; "
                         f"profiles: quick, standard, full; devices: cpu, cuda")
    grid = THROUGHPUT_GRIDS[device, profile]
    names = list(variants) if variants else registry.names()
    for name in names:
        registry.get(name)  # ValueError naming the valid variants
    if seq_lens is not None and any(n <= 0 for n in seq_lens):
        raise ValueError(f"sequence lengths must be positive, got {min(seq_lens)}")
    run_dtypes = checked_dtypes(device, dtypes, grid.dtypes)
    cases: dict[str, Case] = {}
    for name in names:
        dense_mask = registry.get(name).backend_for(device) == DENSE_MASK_BACKEND
        for sweep in grid.sweeps:
            if dense_mask and not sweep.dense_masks:
                continue
            own = run_dtypes if dtypes else sweep.dtypes or run_dtypes  # --dtype: every sweep in those
            sweep_dtypes = [d for d in own if d in run_dtypes]
            for dtype in sweep_dtypes:
                for head_dim in grid.head_dims:
                    for mode in sweep.modes:
                        for causal in grid.causal:
                            if mode == "decode" and not causal:
                                continue
                            for n in sorted(set(seq_lens or sweep.seq_lens)):
                                c = _case(grid, name, device, dtype, head_dim, sweep.level, mode, causal, n)
                                cases.setdefault(c.case_id, c)
    for point in grid.fidelity:
        if point.variant in names and (seq_lens is None or point.seq_len in seq_lens):
            c = _case(grid, point.variant, device, run_dtypes[0], grid.head_dims[0], point.level, point.mode,
                      True, point.seq_len, kind="fidelity", budget_ms=grid.fidelity_budget_ms)
            cases.setdefault(c.case_id, c)
    return list(cases.values())


def _case(grid: Grid, variant, device, dtype, head_dim, level, mode, causal, seq_len, **fields) -> Case:
    return Case(**{
        "variant": variant, "device": device, "dtype": dtype, "mode": mode, "level": level,
        "seq_len": seq_len, "batch": batch_for(grid.total_tokens, seq_len), "total_tokens": grid.total_tokens,
        "n_heads": grid.width // head_dim, "head_dim": head_dim, "causal": causal,
        "budget_ms": grid.budget_ms, "warmup_ms": grid.warmup_ms, "energy_ms": grid.energy_ms,
        "time_cap_ms": grid.time_cap_ms, "remeasure_ms": grid.remeasure_ms, **fields})


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
    state_bytes: int | None = None  # decode: the bytes of the state after the context (KV cache or recurrent)


def _no_reset() -> None:
    pass


def _training_call(forward: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """Forward, then backward of a random output gradient (drawn in the first call, which no timed round
    is: the warm-up or the sizing call)."""
    grad_out: list[torch.Tensor] = []

    def call() -> torch.Tensor:
        out = forward()
        if not grad_out:
            grad_out.append(torch.randn_like(out))
        out.backward(grad_out[0])
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
    v = registry.get(case.variant)
    if case.level != "kernel" or v.attention_fn is not None:
        return
    if v.kernel is None:
        raise Unsupported(f"{case.variant} has no attention(q, k, v) kernel; it competes at the layer level")
    if case.mode == "decode":
        raise Unsupported(f"{case.variant} decodes through its mixer's step(): decode is measured at the "
                          "layer level")


def _training_or_inference(case: Case, forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor],
                           tokens: int, flops_: int | None) -> Workload:
    """fwd: the forward without autograd; fwd_bwd: forward + backward of a random output gradient, the
    gradients of `leaves` reset in each round's setup."""
    if case.mode == "fwd_bwd":
        return Workload(_training_call(forward), _clear_grads(leaves), leaves, tokens, flops_)
    return Workload(_inference(forward), _no_reset, [], tokens, flops_)


def mixer_kernel_workload(case: Case) -> Workload:
    """A mixer-only family's kernel (`v.kernel`: mamba's selective scan, the SSD, delta-rule, GLA or
    retention core) on the inputs its `kernel_inputs` draws for (batch, heads, N, head_dim) in the
    case's dtype; fwd_bwd differentiates the inputs of that dtype (the activations)."""
    v = registry.get(case.variant)
    inputs = v.kernel_inputs(case.batch, case.n_heads, case.seq_len, case.head_dim,
                             torch.Generator().manual_seed(0), dtype=case.torch_dtype)
    inputs = {k: t.to(case.device) if torch.is_tensor(t) else t for k, t in inputs.items()}
    leaves = [t.requires_grad_(case.mode == "fwd_bwd") for t in inputs.values()
              if torch.is_tensor(t) and t.dtype == case.torch_dtype]
    return _training_or_inference(case, lambda: v.kernel(**inputs), leaves, case.batch * case.seq_len, None)


def kernel_workload(case: Case) -> Workload:
    v = registry.get(case.variant)
    if v.attention_fn is None:
        return mixer_kernel_workload(case)
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
        return Workload(call, _no_reset, [], b, count(1, n + 1), memory.tensor_bytes(state))
    grad = case.mode == "fwd_bwd"
    q, k, vv = make(n, grad), make(n, grad), make(n, grad)
    forward = lambda: v.attention(q, k, vv, causal=case.causal, **case.params)  # noqa: E731
    return _training_or_inference(case, forward, [q, k, vv], b * n, count(n, n))


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
        return Workload(call, _no_reset, [], b, count(1, n + 1, b), memory.tensor_bytes(state))
    x.requires_grad_(case.mode == "fwd_bwd")
    return _training_or_inference(case, lambda: mixer(x), [x, *mixer.parameters()], b * n, count(n, n, b * n))


def build_workload(case: Case) -> Workload:
    """The case's call; measure_case has already checked its level (check_level)."""
    return kernel_workload(case) if case.level == "kernel" else layer_workload(case)


# --- measuring --------------------------------------------------------------------------------------

def tf32_enabled(device: str) -> bool:
    return torch.device(device).type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)


def peak_matmul_tflops(device: str, dtype: str) -> tuple[str, float]:
    """(precision, TFLOP/s): the matmul peak a case of this dtype is set against, measured once per run.

    One peak per precision (harness.flops.matmul_precision): fp32 (and fp32 with TF32 on CUDA), fp16,
    bf16. Cached in the run directory named by $ATTNBENCH_RUN_DIR when set (the runner's worker), else
    once per process.
    """
    precision = flops.matmul_precision(torch.device(device).type, dtype, tf32_enabled(device))
    return precision, _peak_matmul_tflops(device, env.device_name(device), precision,
                                          os.environ.get(runner.RUN_DIR_ENV))


@functools.cache
def _peak_matmul_tflops(device: str, device_name: str, precision: str, run_dir: str | None) -> float:
    size = PEAK_MATMUL_SIZE[torch.device(device).type]
    key = f"{device_name} {precision} {size}^3"
    path = Path(run_dir) / PEAK_FILE if run_dir else None
    cached = store.read_json_cache(path) if path else {}  # a corrupt file is moved aside and re-measured
    if not isinstance(cached.get(key), (int, float)) or not math.isfinite(cached[key]) or cached[key] <= 0:
        dtype, tf32 = as_dtype(precision.removesuffix("+tf32")), precision.endswith("+tf32")
        with _tf32(tf32):
            cached[key] = timing.matmul_peak_tflops(device, dtype, size, PEAK_BUDGET_MS)
        if path:
            store.write_json(path, cached)
    return cached[key]


@contextlib.contextmanager
def _tf32(enabled: bool):
    """TF32 matmuls on (CUDA) for the peak of `float32+tf32`; the previous setting is restored."""
    if not enabled:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


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


def cap_mb(case: Case) -> int | None:
    """The case's memory cap, else on the CPU the safety cap (harness.memory.safety_cap_mb)."""
    return case.memory_cap_mb or memory.safety_cap_mb(case.device)


def measure_case(case: Case, benchmark) -> None:
    """Measure one case into `benchmark`, a pytest-benchmark fixture (from pytest or make_fixture).

    Its stats hold the timed rounds; every other figure goes into its extra_info. Order: peak matmul
    of the case's precision (cached), build, warm-up (compile, autotune), one timed call under fresh
    peak-memory stats (checked for NaN/Inf, sizes the number of rounds), the timed rounds with an L2
    flush in each setup (re-measured while they spread widely; a fidelity case alternates them with an
    independent timer), then the energy phase (NVML samples taken then, not during the timed rounds).
    """
    started, clock = env.now(), time.perf_counter()
    check_level(case)  # before the peak matmul, which an unsupported case does not need
    precision, peak = peak_matmul_tflops(case.device, case.dtype)
    compiling.allow_recompiles(case.device, reset=True)
    gpu = telemetry.GpuTelemetry.open(case.device)
    timer = timing.timer_for(case.device)
    try:
        with memory.call_memory(case.device) as meter, memory.memory_cap(case.device, cap_mb(case)):
            work = build_workload(case)
            meter.trace_call(work.call, work.reset)  # CPU: an untimed call, traced (the tracked memory peak)
            compiled = compiling.counts()
            # No warm-up budget (the CPU profiles: nothing compiles or autotunes there): the sizing call
            # below is the first call timed.
            warmup_calls, first_call_ms = (timing.warm_up(work.call, work.reset, case.device, case.warmup_ms)
                                           if case.warmup_ms > 0 else (0, None))
            meter.start_call()  # the steady-state call: memory, NaN check, rounds
            work.reset()
            out, estimate_ms = timing.timed_call(work.call, case.device)
            first_call_ms = estimate_ms if first_call_ms is None else first_call_ms
            if compiling.fallback_since(compiled):
                raise compiling.EagerFallback("a compiled kernel ran eagerly before the timed rounds "
                                              "(dynamo's recompile limit was reached): not timed")
            compiled = compiling.counts()
            figures = meter.read()
            runner.check_finite(case.variant, out, *(t.grad for t in work.leaves if t.grad is not None))
            del out
            flush = timing.L2Flush(case.device)

            def setup() -> None:
                work.reset()
                flush()

            before = env.cpu_snapshot()
            if case.kind == "fidelity":
                figures |= _side_by_side(benchmark, work, setup, estimate_ms, case)
            else:
                rounds = timing.rounds_for(case.budget_ms, estimate_ms)
                policy = timing.NoisePolicy(NOISE_SPREAD_LIMIT, NOISE_PRECISION, case.remeasure_ms)
                stability = timing.measure_stably(benchmark, work.call, setup, rounds, policy, timer)
                figures |= stability.columns()
            figures["others_cpu_share"] = env.others_cpu_share(before, env.cpu_snapshot())
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
        "peak_precision": precision, "decode_state_bytes": work.state_bytes,
        **figures, "nvml_mem_used_bytes": used, "device_mem_total_bytes": total,
        **telemetry.summarize(sampler.samples, sampler.reasons),
        "first_call_ms": first_call_ms, "warmup_calls": warmup_calls, "l2_flush_bytes": flush.nbytes,
        "timer": timer.__name__, "threads": env.cpu_threads(), "cpu_governor": env.cpu_governor(),
        "started_at": started, "finished_at": env.now(), "case_wall_ms": (time.perf_counter() - clock) * 1e3,
    })


# A fidelity case alternates the two timers in turns of about this long each (longer where our MIN_ROUNDS
# calls take longer), at least two. With two turns, then four of 1 s, the medians on this shared machine
# differed by 6-8% in 3 of 16 comparisons (a different case each time, agreeing within 2% in other runs:
# a burst of load during one timer's turns); turns shorter than a burst put it on both.
FIDELITY_TURN_MS = 250.0


def fidelity_turns(budget_ms: float, estimate_ms: float) -> int:
    """How many turns a fidelity case alternates the two timers in, each timer's budget split evenly."""
    turn_ms = max(FIDELITY_TURN_MS, timing.MIN_ROUNDS * estimate_ms)
    return max(2, int(budget_ms // turn_ms))


def _side_by_side(benchmark, work: Workload, setup: Callable[[], None], estimate_ms: float,
                  case: Case) -> dict:
    """Our rounds and an independent timer's, alternated in turns (ours, theirs, ours, ...) so that a
    burst of load falls on both; each timer's median is over all of its turns."""
    turns = fidelity_turns(case.budget_ms, estimate_ms)
    turn_ms = case.budget_ms / turns
    rounds = timing.rounds_for(turn_ms, estimate_ms)
    references = []
    for turn in range(turns):
        fixture = benchmark if turn == 0 else timing.make_fixture(case.slug(), timing.timer_for(case.device))
        timing.time_rounds(fixture, work.call, setup, rounds)
        if turn:
            for duration in fixture.stats.stats.data:
                benchmark.stats.stats.update(duration)
        references.append(timing.independent_median_ms(work.call, setup, case.device, turn_ms, work.leaves))
    times = [t for r in references for t in r["reference_times_ms"] or []]
    medians = [r["reference_latency_ms"] for r in references]
    median = float(np.median(times)) if times else float(np.mean(medians))
    return {"reference_latency_ms": median, "reference_timer": references[0]["reference_timer"]}


# Figures measure_case leaves in extra_info that become row columns as they are (null when absent).
FIGURES = (
    "flops", "peak_matmul_tflops", "peak_precision", "mem_alloc_peak_bytes", "mem_reserved_peak_bytes",
    "mem_rss_peak_bytes", "nvml_mem_used_bytes", "device_mem_total_bytes", "power_w_mean",
    "energy_j_per_token", "sm_clock_mhz_mean", "temperature_c_max", "throttled", "throttle_reasons",
    "first_call_ms", "warmup_calls", "l2_flush_bytes", "timer", "threads", "cpu_governor", "extra_rounds",
    "noisy", "decode_state_bytes", "reference_latency_ms", "reference_timer", "case_wall_ms",
    "eager_fallback", "telemetry_reason", "others_cpu_share",
    "mem_tracked_peak_bytes", "mem_reason",
)


def metrics_from_benchmark(bench: dict[str, Any]) -> dict[str, Any]:
    """Metric columns of a row from one pytest-benchmark record (an entry of its JSON 'benchmarks')."""
    info = bench["extra_info"]
    latency = timing.latency_summary(bench["stats"])
    seconds = latency["latency_ms"] / 1e3
    tflops = info["flops"] / seconds / 1e12 if info["flops"] else None
    state, reference = info.get("decode_state_bytes"), info.get("reference_latency_ms")
    return {
        **latency,
        "tokens_per_s": info["tokens_per_call"] / seconds,
        "tflops": tflops,
        "pct_of_peak": flops.percent_of_peak(tflops, info["peak_matmul_tflops"]),
        **{k: info.get(k) for k in FIGURES},
        "decode_state_bytes_per_seq": None if state is None else state / info["case"]["batch"],
        "fidelity_ratio": None if not reference else latency["latency_ms"] / reference,
    }


def run_case(case: Case) -> dict[str, Any]:
    """The runner's entry point: the pedantic loop on a fixture made here, then the same conversion
    (frontier cases run through suites.frontier's own entry point)."""
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
    df = df[df["kind"].fillna("sweep") == "sweep"] if "kind" in df else df
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


def find_max_n(*args, **kwargs):
    """`attnbench run --suite throughput --find-max-n`: the memory frontier search (suites.frontier)."""
    return frontier.find_max_n(*args, **kwargs)


# The frontier builds on this module's cases and workloads; imported last so that either module may be
# imported first (this one reads it only when called).
from suites import frontier  # noqa: E402
