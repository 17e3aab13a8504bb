"""Throughput measuring: one case timed by harness.timing's loop, and the row it makes.

Each row carries its noise: the spread of its rounds (IQR / median), the confidence interval of its
median, and `noisy` when re-measuring did not bring that interval within +-2% (harness.timing). Each is
set against the measured matmul peak of its own precision (cached in the run directory). A `fidelity`
case is timed side by side by our loop and an independent timer; the energy phase runs after the timed
rounds, under NVML's counter. A kernel-level forward row carries the memory model's prediction of its peak
(`mem_predicted_bytes`: suites.throughput.planning.predicted_buffer_bytes) beside the measured one.

Both entry points time through `measure_case`, which returns the rounds (seconds) and the figures
around them: `attnbench run --suite throughput` makes a row of them in `run_case`;
`pytest suites/bench_throughput.py` hands them to pytest-benchmark's fixture, whose JSON file
`attnbench import-benchmark` reads. Both derive the row from a record of the same shape, an entry of
pytest-benchmark's JSON 'benchmarks' (`metrics_from_benchmark`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import compiling, env, flops, memory, runner, store, telemetry, timing
from harness.context import RunContext
from harness.registry import as_dtype
from suites.throughput.planning import Case, predicted_buffer_bytes
from suites.throughput.workloads import Workload, build_workload, check_level

PEAK_MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}  # n of the n^3 matmul whose rate is the peak
PEAK_BUDGET_MS = 200.0
NOISE_SPREAD_LIMIT = 0.05  # IQR / median above which a case is re-measured
NOISE_PRECISION = 0.02  # ... until its median's 95% interval is within +-2%
PEAK_FILE = "peak_matmul.json"


def tf32_enabled(device: str) -> bool:
    return torch.device(device).type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)


def peak_matmul_tflops(device: str, dtype: str, context: RunContext) -> tuple[str, float]:
    """(precision, TFLOP/s): the matmul peak a case of this dtype is set against, measured once per run.

    One peak per precision (harness.flops.matmul_precision): fp32 (and fp32 with TF32 on CUDA), fp16,
    bf16. Kept in the context's cache for the worker's later cases, and in the run directory (PEAK_FILE)
    for the run's other workers, when the context has one.
    """
    precision = flops.matmul_precision(torch.device(device).type, dtype, tf32_enabled(device))
    key = (PEAK_FILE, device, precision)
    if key not in context.cache:
        context.cache[key] = _peak_matmul_tflops(device, env.device_name(device), precision, context.run_dir)
    return precision, context.cache[key]


def _peak_matmul_tflops(device: str, device_name: str, precision: str, run_dir: Path | None) -> float:
    """The peak cached in the run directory, else measured now (and cached there)."""
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


def measure_case(case: Case, context: RunContext) -> tuple[list[float], dict[str, Any]]:
    """Measure one case: (the timed rounds in seconds, every other figure as pytest-benchmark's
    extra_info of the record). Order: peak matmul
    of the case's precision (cached), build, warm-up (compile, autotune), one timed call under fresh
    peak-memory stats (checked for NaN/Inf, sizes the number of rounds), the timed rounds with an L2
    flush in each setup (re-measured while they spread widely; a fidelity case alternates them with an
    independent timer), then the energy phase (NVML samples taken then, not during the timed rounds).
    A case of the compiled series makes its compiling call right after the build, before any other call:
    its seconds are `compile_s`, in none of the timed rounds.
    """
    started, clock = env.now(), time.perf_counter()
    check_level(case)  # before the peak matmul, which an unsupported case does not need
    precision, peak = peak_matmul_tflops(case.device, case.dtype, context)
    compiling.allow_recompiles(case.device, reset=True, compiled=case.compiled)
    gpu = telemetry.GpuTelemetry.open(case.device)
    timer = timing.timer_for(case.device)
    try:
        with memory.call_memory(case.device) as meter, memory.memory_cap(case.device, cap_mb(case)):
            work = build_workload(case)
            compile_s = _compile(work, case.device)
            compiled = compiling.counts()
            # No warm-up budget (the CPU profiles: nothing compiles or autotunes there): the sizing call
            # below is the first call.
            warmup_calls, first_call_ms = (timing.warm_up(work.call, work.reset, case.device, case.warmup_ms)
                                           if case.warmup_ms > 0 else (0, None))
            # The sizing call: memory, NaN check, the number of rounds. On the CPU it is the traced call
            # (harness.memory): tracing can only lengthen it, so it sizes the rounds on the safe side and
            # no call is made for the memory figures alone.
            meter.start_call()
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
                durations, side = _side_by_side(work, setup, estimate_ms, case, timer)
                figures |= side
            else:
                rounds = timing.rounds_for(case.budget_ms, estimate_ms)
                policy = timing.NoisePolicy(NOISE_SPREAD_LIMIT, NOISE_PRECISION, case.remeasure_ms)
                durations, stability = timing.measure_stably(work.call, setup, rounds, policy, timer)
                figures |= stability.columns()
            figures["others_cpu_share"] = env.others_cpu_share(before, env.cpu_snapshot())
            with telemetry.sampler(gpu) as sampler:  # never during the timed rounds
                figures |= _energy_phase(work, gpu, case, estimate_ms)
            used, total = gpu.memory() if gpu else (None, None)
            figures["eager_fallback"] = compiling.fallback_since(compiled)
    finally:
        if gpu:
            gpu.close()
    return durations, {
        "case": case.model_dump(mode="json"),
        "environment": env.describe(case.device),
        "tokens_per_call": work.tokens, "flops": work.flops, "peak_matmul_tflops": peak,
        "peak_precision": precision, "decode_state_bytes": work.state_bytes,
        "decode_state_kind": work.state_kind, "mem_predicted_bytes": predicted_buffer_bytes(case),
        "padded_tokens": work.padded_tokens, "ragged_path": work.ragged_path,
        **figures, "nvml_mem_used_bytes": used, "device_mem_total_bytes": total,
        **telemetry.summarize(sampler.samples, sampler.reasons),
        "first_call_ms": first_call_ms, "warmup_calls": warmup_calls, "compile_s": compile_s,
        "l2_flush_bytes": flush.nbytes,
        "timer": timer.__name__, "threads": env.cpu_threads(), "cpu_governor": env.cpu_governor(),
        "started_at": started, "finished_at": env.now(), "case_wall_ms": (time.perf_counter() - clock) * 1e3,
    }


def _compile(work: Workload, device: str) -> float | None:
    """The compiled series' compiling call (harness.compiling.compiling_call): its seconds, up to the end
    of its kernels on a GPU; None for an eager case. Its output is dropped: the sizing call after it checks
    one for NaN and Inf."""
    if work.compiled is None:
        return None

    def clock() -> float:
        timing.synchronize(device)
        return time.perf_counter()

    work.reset()
    _, seconds = compiling.compiling_call(work.call, work.compiled, clock)
    return seconds


# A fidelity case alternates the two timers in turns of about this long each (longer where our MIN_ROUNDS
# calls take longer), at least two. With two turns, then four of 1 s, the medians on this shared machine
# differed by 6-8% in 3 of 16 comparisons (a different case each time, agreeing within 2% in other runs:
# a burst of load during one timer's turns); turns shorter than a burst put it on both.
FIDELITY_TURN_MS = 250.0


def fidelity_turns(budget_ms: float, estimate_ms: float) -> int:
    """How many turns a fidelity case alternates the two timers in, each timer's budget split evenly."""
    turn_ms = max(FIDELITY_TURN_MS, timing.MIN_ROUNDS * estimate_ms)
    return max(2, int(budget_ms // turn_ms))


def _side_by_side(work: Workload, setup: Callable[[], None], estimate_ms: float, case: Case,
                  timer: Callable[[], Any]) -> tuple[list[float], dict]:
    """Our rounds and an independent timer's, alternated in turns (ours, theirs, ours, ...) so that a
    burst of load falls on both: (our rounds of every turn, in seconds; the independent timer's median
    over all of its turns)."""
    turns = fidelity_turns(case.budget_ms, estimate_ms)
    turn_ms = case.budget_ms / turns
    rounds = timing.rounds_for(turn_ms, estimate_ms)
    durations, references = [], []
    for _ in range(turns):
        durations += timing.time_rounds(work.call, setup, rounds, timer)
        references.append(timing.independent_median_ms(work.call, setup, case.device, turn_ms, work.leaves))
    times = [t for r in references for t in r["reference_times_ms"] or []]
    medians = [r["reference_latency_ms"] for r in references]
    median = float(np.median(times)) if times else float(np.mean(medians))
    return durations, {"reference_latency_ms": median, "reference_timer": references[0]["reference_timer"]}


# Figures measure_case leaves in extra_info that become row columns as they are (null when absent).
FIGURES = (
    "flops", "peak_matmul_tflops", "peak_precision", "mem_alloc_peak_bytes", "mem_reserved_peak_bytes",
    "mem_rss_peak_bytes", "nvml_mem_used_bytes", "device_mem_total_bytes", "power_w_mean",
    "energy_j_per_token", "sm_clock_mhz_mean", "temperature_c_max", "throttled", "throttle_reasons",
    "first_call_ms", "warmup_calls", "l2_flush_bytes", "timer", "threads", "cpu_governor", "extra_rounds",
    "noisy", "decode_state_bytes", "reference_latency_ms", "reference_timer", "case_wall_ms",
    "eager_fallback", "telemetry_reason", "others_cpu_share", "compile_s",
    "mem_tracked_peak_bytes", "mem_reason", "mem_predicted_bytes", "padded_tokens", "ragged_path",
)


def benchmark_record(durations: list[float], extra_info: dict[str, Any]) -> dict[str, Any]:
    """`measure_case`'s result as pytest-benchmark's JSON holds a record (the fields rows read)."""
    return {"stats": timing.round_stats(durations), "extra_info": extra_info}


def metrics_from_benchmark(bench: dict[str, Any]) -> dict[str, Any]:
    """Metric columns of a row from one pytest-benchmark record (an entry of its JSON 'benchmarks', or
    `benchmark_record`)."""
    info = bench["extra_info"]
    latency = timing.latency_summary(bench["stats"])
    seconds = latency["latency_ms"] / 1e3
    tflops = info["flops"] / seconds / 1e12 if info["flops"] else None
    state, reference = info.get("decode_state_bytes"), info.get("reference_latency_ms")
    return {
        **latency,
        "tokens_per_s": info["tokens_per_call"] / seconds,  # real tokens (a ragged batch's padding not)
        "real_tokens": info["tokens_per_call"],
        "tflops": tflops,
        "pct_of_peak": flops.percent_of_peak(tflops, info["peak_matmul_tflops"]),
        **{k: info.get(k) for k in FIGURES},
        "decode_state_bytes_per_seq": None if state is None else state / info["case"]["batch"],
        **decode_memory_columns(info),
        "fidelity_ratio": None if not reference else latency["latency_ms"] / reference,
    }


def decode_memory_columns(info: dict[str, Any]) -> dict[str, Any]:
    """`kv_cache_bytes` and `state_bytes`: the decoding state's bytes per sequence (a decode row's
    decode_state_bytes / batch), in the column of what it holds: a KV cache (its keys and values at the
    case's kv_heads, N + 1 positions preallocated; a window's bounded cache too) or a recurrent state. The
    other column, and both in a row that is not a decode row, are null."""
    state, kind = info.get("decode_state_bytes"), info.get("decode_state_kind")
    per_seq = None if state is None else state / info["case"]["batch"]
    return {"kv_cache_bytes": per_seq if kind == "kv_cache" else None,
            "state_bytes": per_seq if kind == "recurrent" else None}


def run_case(case: Case, context: RunContext) -> dict[str, Any]:
    """The runner's entry point: the case measured, then the same conversion as an imported record
    (frontier cases run through suites.frontier's own entry point)."""
    return metrics_from_benchmark(benchmark_record(*measure_case(case, context)))
