"""The memory frontier: for each variant, the largest N one forward call runs at (batch 1, the kernel
level where a variant has one) under the machine's memory or a `--memory-gb` cap, found by doubling and
then bisecting, with the reason the next length failed; beside it the memory model's prediction
(`predicted_peak_bytes`, `predicted_max_n`). Its probes are throughput cases of kind `frontier`, each one
call under the cap (`probe_frontier`, this module's `run_case` in the search's worker process), recorded
as rows like any case. Entry point: `find_max_n`, which `attnbench run --suite throughput --find-max-n`
reaches through the throughput suite (suites.throughput.suite). It builds on the throughput package's
planning, workloads and measuring modules, and none of them imports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness import env, memory, registry, runner, store, timing
from harness.context import RunContext
from suites.grids import THROUGHPUT_GRIDS
from suites.throughput.measuring import cap_mb
from suites.throughput.planning import Case, checked_dtypes, predicted_buffer_bytes
from suites.throughput.workloads import build_workload, check_level

DEFAULT_FRONTIER_TIME_CAP_S = 120.0


def probe_frontier(case: Case) -> dict[str, Any]:
    """One call of the case under its memory cap: does it run, in how long, with how much memory."""
    clock = time.perf_counter()
    check_level(case)
    with memory.call_memory(case.device) as meter, memory.memory_cap(case.device, cap_mb(case)):
        work = build_workload(case)
        meter.start_call()
        out, call_ms = timing.timed_call(work.call, case.device)
        timing.synchronize(case.device)
        figures = meter.read()
        runner.check_finite(case.variant, out)
        del out, work
    return {"latency_ms": call_ms, "tokens_per_s": case.batch * case.seq_len / (call_ms / 1e3), **figures,
            "predicted_peak_bytes": predicted_peak_bytes(case), "threads": env.cpu_threads(),
            "case_wall_ms": (time.perf_counter() - clock) * 1e3}


def run_case(case: Case, context: RunContext) -> dict[str, Any]:
    """The entry point runner.Worker calls in the search's worker process: a probe needs no context."""
    return probe_frontier(case)


# --- memory model and the memory frontier -----------------------------------------------------------

RUNTIME_BYTES = 64 * memory.MIB  # code and buffers a first call maps (oneDNN, torch's thread pool)


def predicted_peak_bytes(case: Case) -> int | None:
    """Arithmetic memory model of one kernel-level forward call's resident peak: the bytes its live
    buffers peak at (suites.throughput.planning.predicted_buffer_bytes: the variant's model of the code
    path that runs on the case's device), plus the runtime a first call maps; checked against the
    measured peak resident memory in tests/test_throughput.py. None for other levels and modes, and for
    code paths with no model (measured, not predicted).
    """
    buffers = predicted_buffer_bytes(case)
    return None if buffers is None else int(buffers + RUNTIME_BYTES)


FRONTIER_HEADS, FRONTIER_HEAD_DIM = 16, 64
FRONTIER_START = 1024
FRONTIER_MAX = 1 << 26  # 64M tokens: a bound on the doubling, far beyond any device of today
FRONTIER_RESOLUTION = 1 / 16  # bisect until the gap is within 1/16 of the largest length that ran


def available_memory_bytes(device: str) -> int:
    """Memory a frontier search may use: the device's free memory on CUDA, MemAvailable on the CPU."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free
    available = memory.available_bytes()
    if available is None:
        raise ValueError("--find-max-n on the CPU needs /proc/meminfo to know the memory available")
    return available


def frontier_level(variant: str) -> str:
    v = registry.get(variant)
    return "kernel" if v.attention_fn is not None or v.kernel is not None else "layer"


def frontier_case(variant: str, device: str, dtype: str, seq_len: int, cap_mb: int) -> Case:
    """B = 1, 16 heads of 64, forward, at the variant's kernel level (its layer when it has none)."""
    return Case(variant=variant, device=device, dtype=dtype, mode="fwd", level=frontier_level(variant),
                seq_len=seq_len, batch=1, total_tokens=seq_len, n_heads=FRONTIER_HEADS,
                head_dim=FRONTIER_HEAD_DIM, causal=True, budget_ms=1, warmup_ms=0, memory_cap_mb=cap_mb,
                kind="frontier")


def predicted_max_n(variant: str, device: str, dtype: str, cap_bytes: int) -> int | None:
    """The largest N whose predicted peak fits under `cap_bytes` (None: the model does not cover it)."""
    def fits(n: int) -> bool | None:
        peak = predicted_peak_bytes(frontier_case(variant, device, dtype, n, 1))
        return None if peak is None else peak <= cap_bytes

    if fits(1) is None or not fits(1):
        return None if fits(1) is None else 0
    low, high = 1, 2
    while high <= FRONTIER_MAX and fits(high):
        low, high = high, high * 2
    if high > FRONTIER_MAX:
        return low
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


@dataclass
class Frontier:
    variant: str
    largest_ok: int | None = None
    first_failure: int | None = None
    failure_status: str = ""
    failure_reason: str = ""


def bisect_frontier(probe: Callable[[int], tuple[str, str]], start: int = FRONTIER_START,
                    maximum: int = FRONTIER_MAX, resolution: float = FRONTIER_RESOLUTION) -> Frontier:
    """Largest N for which probe(N) is 'ok': double from `start` until a failure, then bisect until the
    gap to the first failure is within `resolution` of the largest N that ran (lengths stay multiples of
    64, so the result is a length a kernel would be given)."""
    found = Frontier("")

    def fail(n: int, status: str, reason: str) -> None:
        found.first_failure, found.failure_status, found.failure_reason = n, status, reason

    n = start
    while n <= maximum:
        status, reason = probe(n)
        if status != "ok":
            fail(n, status, reason)
            break
        found.largest_ok, n = n, n * 2
    if found.largest_ok is None or found.first_failure is None:
        return found
    while found.first_failure - found.largest_ok > max(64, found.largest_ok * resolution):
        mid = (found.largest_ok + found.first_failure) // 2 // 64 * 64
        status, reason = probe(mid)
        if status == "ok":
            found.largest_ok = mid
        else:
            fail(mid, status, reason)
    return found


def probe_lengths(probe: Callable[[int], tuple[str, str]], lengths: Sequence[int]) -> Frontier:
    """Probe exactly `lengths`, no search ('does N run?', where a search would spend hours on the way:
    a compute-bound kernel at the edge of a time cap). The frontier is the largest that ran; the first
    failure the shortest failing length above it."""
    found = Frontier("")
    outcomes = {n: probe(n) for n in sorted(set(lengths))}
    ran = [n for n, (status, _) in outcomes.items() if status == "ok"]
    found.largest_ok = max(ran) if ran else None
    above = [n for n, (status, _) in outcomes.items() if status != "ok" and n > (found.largest_ok or 0)]
    if above:
        found.first_failure = min(above)
        found.failure_status, found.failure_reason = outcomes[found.first_failure]
    return found


def frontier_cap_bytes(device: str, memory_gb: float | None) -> tuple[int, str]:
    """The memory a frontier search may use, and a note when a requested cap was lowered to it.

    Never more than 90% of the memory available now: the machine is shared, and a probe must fail
    cleanly (out of memory under the cap) before it exhausts the machine.
    """
    available = int(available_memory_bytes(device) * memory.SAFETY_FRACTION)
    if memory_gb is None:
        return available, ""
    requested = int(memory_gb * 2**30)
    if requested > available:
        return available, (f"--memory-gb {memory_gb:g} is more than the {available / 2**30:.1f} GiB "
                           "available here: capped at that")
    return requested, ""


@dataclass(frozen=True)
class FrontierPlan:
    dtype: str
    variants: list[str]  # the ones that run on the device in that dtype
    cap_bytes: int
    note: str  # why the cap is lower than asked, if it is


def frontier_plan(device: str, profile: str, variants: Sequence[str] | None = None,
                  dtypes: Sequence[str] | None = None, memory_gb: float | None = None,
                  time_cap_s: float = DEFAULT_FRONTIER_TIME_CAP_S) -> FrontierPlan:
    """What `find_max_n` would search, every argument checked (ValueError with one line)."""
    if memory_gb is not None and memory_gb <= 0:
        raise ValueError(f"--memory-gb must be positive, got {memory_gb:g}")
    if time_cap_s <= 0:
        raise ValueError(f"the time cap must be positive, got {time_cap_s:g} s")
    grid = THROUGHPUT_GRIDS.get((device, profile))
    if grid is None:
        raise ValueError(f"no throughput profile {profile!r} on {device!r}")
    dtype = checked_dtypes(device, dtypes, grid.dtypes)[0]
    names = list(variants) if variants else registry.names()
    runnable = [n for n in names if registry.get(n).supports(device, dtype, FRONTIER_HEAD_DIM, True)[0]]
    if not runnable:
        raise ValueError(f"--find-max-n: no variant among {', '.join(names)} runs on {device} in {dtype}")
    return FrontierPlan(dtype, runnable, *frontier_cap_bytes(device, memory_gb))


def find_max_n(device: str, profile: str, out: str | Path, variants: Sequence[str] | None = None,
               dtypes: Sequence[str] | None = None, memory_gb: float | None = None,
               time_cap_s: float | None = None, console=None,
               lengths: Sequence[int] | None = None) -> list[Frontier]:
    """Bisect, per variant, the largest N one forward call runs at (B = 1, 16 heads of 64, the profile's
    first dtype) under the memory cap; every probe is a `frontier` row of `out`, its failure (oom, or
    timeout at the time cap, DEFAULT_FRONTIER_TIME_CAP_S when None) included. Rows carry the model's
    predicted frontier (`predicted_max_n`). With `lengths`, probe only those (`probe_lengths`).

    Probes run in a worker process under RLIMIT_AS (harness.memory), restarted after each failure.
    A re-run with the same `out` reuses the probes already recorded.
    """
    time_cap_s = DEFAULT_FRONTIER_TIME_CAP_S if time_cap_s is None else time_cap_s
    plan = frontier_plan(device, profile, variants, dtypes, memory_gb, time_cap_s)
    dtype, runnable, cap_bytes = plan.dtype, plan.variants, plan.cap_bytes
    cap_mb = cap_bytes // memory.MIB
    say = console.print if console is not None else (lambda *a, **k: None)
    if plan.note:
        say(plan.note)
    say(f"memory frontier on {device} ({dtype}, B=1, H={FRONTIER_HEADS}, D={FRONTIER_HEAD_DIM}, forward): "
        f"cap {cap_bytes / 2**30:.1f} GiB, time cap {time_cap_s:g} s per probe")
    run = store.RunStore(out)
    found = []
    with run.lock():
        environment = env.describe(device)
        run.open(environment)
        done = _recorded_outcomes(run)
        worker = runner.Worker(__name__, RunContext(Path(out).resolve()))
        try:
            for name in runnable:
                predicted = predicted_max_n(name, device, dtype, cap_bytes)

                def probe(n: int, name=name, predicted=predicted) -> tuple[str, str]:
                    case = frontier_case(name, device, dtype, n, cap_mb)
                    if case.case_id in done:
                        return done[case.case_id]
                    started = env.now()
                    status, reason, metrics = worker.run(case, time_cap_s)
                    if status == "timeout":
                        reason = f"time cap: one call did not finish within {time_cap_s:g} s"
                    elif status != "ok":
                        worker.restart()  # the next probe starts from a clean address space
                    say(f"  {name} N={n}: {status} {reason}".rstrip())
                    run.write(runner.case_row(case, status, reason, {**metrics, "predicted_max_n": predicted},
                                              environment, started, env.now(), {"profile": profile}))
                    done[case.case_id] = (status, reason)
                    return status, reason

                frontier = probe_lengths(probe, lengths) if lengths else bisect_frontier(probe)
                frontier.variant = name
                found.append(frontier)
                say(f"{name}: largest N {frontier.largest_ok} (predicted {predicted}); "
                    f"{frontier.failure_status or 'no failure'} at {frontier.first_failure}")
        finally:
            worker.close()
        run.compact()  # the search finished (Ctrl-C keeps the probes' own files)
    return found


def _recorded_outcomes(run: store.RunStore) -> dict[str, tuple[str, str]]:
    """case_id -> (status, reason) of the probes a run directory holds already (a resumed search)."""
    if not run.finished():
        return {}
    rows = store.load(run.root)
    return {r.case_id: (r.status, r.reason if isinstance(r.reason, str) else "") for r in rows.itertuples()}
