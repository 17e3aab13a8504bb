"""Timing with one engine: pytest-benchmark's pedantic loop, inside pytest or called from attnbench.

Method (results/README.md, "What is measured"): a warm-up that runs until compile and autotune are
done (one call, then on until `warmup_ms` has passed), one call timed alone that sizes the run, then
rounds of one call each.
Every round's setup flushes the L2 cache, and a device timer brackets the call: CUDA events on the GPU
(the wait for the end event is outside the measured interval), `time.perf_counter` on the CPU. The
number of rounds follows from a time budget in milliseconds, never from an iteration count. No CUDA
graphs, for any variant.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from harness.registry import device_type

MIN_ROUNDS = 3
MAX_ROUNDS = 10_000
L2_FLUSH_MIN_BYTES = 64 * 2**20


class EventStamp:
    """A CUDA event recorded on the current stream; `end - start` waits for `end`, returns seconds."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record()

    def __sub__(self, start: EventStamp) -> float:
        self.event.synchronize()
        return start.event.elapsed_time(self.event) / 1e3


def cuda_event_timer() -> EventStamp:
    """pytest-benchmark timer for GPU work (`--benchmark-timer harness.timing.cuda_event_timer`).

    pytest-benchmark computes `timer() - timer()` around the call; with events that difference is GPU
    time and synchronizes the device, which its default host clock would not (asynchronous launches).
    """
    return EventStamp()


def timer_for(device: str) -> Callable[[], Any]:
    return cuda_event_timer if device_type(device) == "cuda" else time.perf_counter


def synchronize(device: str) -> None:
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)


class L2Flush:
    """Setup of every timed round: overwrite a buffer larger than the L2 cache, so no call starts warm.

    On the CPU it does nothing: a last-level-cache flush would cost more than the small CPU cases.
    """

    def __init__(self, device: str):
        self.buffer = None
        if device_type(device) == "cuda":
            l2_bytes = torch.cuda.get_device_properties(torch.device(device)).L2_cache_size
            self.buffer = torch.empty(max(2 * l2_bytes, L2_FLUSH_MIN_BYTES), dtype=torch.int8, device=device)

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.numel()

    def __call__(self) -> None:  # returns None: pedantic treats a setup's return value as call arguments
        if self.buffer is not None:
            self.buffer.zero_()


class _SilentLogger:
    def debug(self, *args, **kwargs) -> None:
        pass

    info = warning = error = debug


def make_fixture(name: str, timer: Callable[[], Any]):
    """A pytest-benchmark BenchmarkFixture outside pytest, so attnbench times through the same loop.

    Only `pedantic()` is used; the options below matter only to its calibrated `benchmark(fn)` mode.
    """
    from pytest_benchmark.fixture import BenchmarkFixture
    from pytest_benchmark.utils import NameWrapper

    options = dict(
        node=SimpleNamespace(name=name, _nodeid=name, nodeid=name), disable_gc=False,
        timer=NameWrapper(timer),
        min_rounds=MIN_ROUNDS, min_time=0.0, max_time=0.0, warmup=False, warmup_iterations=0,
        precision=None, confidence=None,  # 5.3+: None keeps the fixed-rounds pedantic loop
        calibration_precision=10, add_stats=lambda stats: None, logger=_SilentLogger(),
        warner=lambda *args, **kwargs: None, disabled=False, cprofile=False, cprofile_loops=None,
        cprofile_dump=None,
    )
    accepted = inspect.signature(BenchmarkFixture).parameters  # the signature grew across releases
    return BenchmarkFixture(**{k: v for k, v in options.items() if k in accepted})


def warm_up(target: Callable[[], Any], setup: Callable[[], None], device: str,
            warmup_ms: float) -> tuple[int, float]:
    """Run target until compile and autotune are done: once, then on until warmup_ms has passed.

    Returns (calls, first call in ms); the first call's time includes compiling or autotuning.
    """
    calls, first_ms = 0, 0.0
    started = time.perf_counter()
    while calls == 0 or (time.perf_counter() - started) * 1e3 < warmup_ms:
        setup()
        target()
        synchronize(device)
        calls += 1
        first_ms = first_ms or (time.perf_counter() - started) * 1e3
    return calls, first_ms


def timed_call(target: Callable[[], Any], device: str) -> tuple[Any, float]:
    """One call under the device timer: (its result, milliseconds)."""
    timer = timer_for(device)
    start = timer()
    result = target()
    return result, (timer() - start) * 1e3


def rounds_for(budget_ms: float, estimate_ms: float) -> int:
    """Rounds that fill the time budget, within [MIN_ROUNDS, MAX_ROUNDS]."""
    wanted = math.ceil(budget_ms / max(estimate_ms, 1e-6))
    return int(min(max(wanted, MIN_ROUNDS), MAX_ROUNDS))


def time_rounds(benchmark, target: Callable[[], Any], setup: Callable[[], None], rounds: int) -> Any:
    """pytest-benchmark's pedantic loop: `rounds` rounds of one call, `setup` before each, untimed."""
    return benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)


def latency_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """Median and 20/80 quantiles in ms from pytest-benchmark stats (seconds, with per-round `data`)."""
    if not stats.get("data"):
        raise ValueError("benchmark stats without per-round data: write them with --benchmark-json "
                         "(or --benchmark-save-data)")
    data = stats["data"]
    return {
        "latency_ms": stats["median"] * 1e3,
        "latency_ms_p20": float(np.quantile(data, 0.2)) * 1e3,
        "latency_ms_p80": float(np.quantile(data, 0.8)) * 1e3,
        "rounds": int(stats["rounds"]),
    }


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int, budget_ms: float) -> float:
    """TFLOP/s of a size^3 matmul, timed by the same warm-up, flush and pedantic loop as every case."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    fixture = make_fixture(f"matmul-{size}", timer_for(device))
    flush = L2Flush(device)
    target = lambda: torch.mm(a, b, out=out)  # noqa: E731
    warm_up(target, flush, device, warmup_ms=budget_ms / 4)
    flush()
    _, estimate_ms = timed_call(target, device)
    time_rounds(fixture, target, flush, rounds_for(budget_ms, estimate_ms))
    return 2 * size**3 / fixture.stats.stats.median / 1e12
