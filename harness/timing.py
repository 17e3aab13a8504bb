"""Timing with one engine, our own loop: `attnbench run` and suites/bench_throughput.py both time
through `time_rounds`; the latter hands the rounds to pytest-benchmark's fixture (`ReplayClock`).

Method (results/README.md, "What is measured"): a warm-up that runs until compile and autotune are
done (one call, then on until `warmup_ms` has passed), one call timed alone that sizes the run, then
rounds of one call each.
Every round's setup (untimed) flushes the L2 cache, and a device timer brackets the call: CUDA events on
the GPU (the wait for the end event is outside the measured interval), `time.perf_counter` on the CPU.
Each call's output is dropped as it returns, before the next round. The number of rounds follows from a
time budget in milliseconds, never from an iteration count. No CUDA graphs, for any variant.

The loop is ours, so it depends on no other package's internals (tests/test_public_interfaces.py).

Noise is measured, not hidden: each measurement reports its spread (IQR / median) and a distribution-free
95% confidence interval of its median. A measurement whose spread exceeds a limit is re-measured (more
rounds of the same loop) until the interval is within +-precision of the median or its extra time is
spent; one still outside is `noisy`.

A timer that checks itself: `independent_median_ms` times the same call with a timer that shares no
code with ours (`torch.utils.benchmark.Timer.blocked_autorange` on the CPU, `triton.testing.do_bench`
on CUDA); the suites store the ratio of the two medians.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.registry import device_type

MIN_ROUNDS = 3
MAX_ROUNDS = 10_000
L2_FLUSH_MIN_BYTES = 64 * 2**20
CONFIDENCE = 0.95  # of the median's interval


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
    """The timer for GPU work: `timer() - timer()` around a call is GPU time, and waits for the end event,
    which a host clock would not (asynchronous launches). Usable as any timer whose readings are
    subtracted (also `--benchmark-timer harness.timing.cuda_event_timer` in a pytest-benchmark test)."""
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

    def __call__(self) -> None:
        if self.buffer is not None:
            self.buffer.zero_()


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


def time_rounds(target: Callable[[], Any], setup: Callable[[], None], rounds: int,
                timer: Callable[[], Any]) -> list[float]:
    """`rounds` rounds of one call each, `setup` before each (untimed): each round's seconds.

    Each call's output is dropped as it returns, as timeit and do_bench do: a loop that keeps a round's
    output alive through the next round's call (pytest-benchmark's pedantic does) made the linear kernel
    at N = 4096 3-4% slower than the same call under blocked_autorange (scripts/bench_timer_output.py).
    The difference of two readings is taken at once: with CUDA events it waits for the round's end.
    """
    durations = []
    for _ in range(rounds):
        setup()
        start = timer()
        target()  # the output is not bound: freed here, before the next round
        durations.append(timer() - start)
    return durations


def round_stats(durations: Sequence[float]) -> dict[str, Any]:
    """Rounds (seconds each) as the `stats` of a pytest-benchmark JSON record: the fields
    latency_summary reads, so a row is made alike from our rounds and from an imported JSON file."""
    data = [float(d) for d in durations]
    return {"data": data, "median": statistics.median(data), "rounds": len(data), "iterations": 1}


class ReplayClock:
    """A timer that replays rounds measured by `time_rounds`, for a harness that times a call itself.

    pytest-benchmark's fixture runs one pedantic loop and has no public way to be handed rounds; set as
    its timer (`@pytest.mark.benchmark(timer=clock)`), `benchmark.pedantic(clock.step,
    setup=clock.rewind, rounds=clock.load(durations))` records exactly `durations`: each round's setup
    sets the clock to 0 and its call moves it to the next duration, so end - start is that duration.
    """

    def __init__(self) -> None:
        self.__name__ = "replayed_rounds"  # the timer's name in pytest-benchmark's options
        self.now = 0.0
        self.pending: deque[float] = deque()

    def __call__(self) -> float:
        return self.now

    def load(self, durations: Sequence[float]) -> int:
        """Queue the rounds to replay; returns how many."""
        self.pending = deque(float(d) for d in durations)
        return len(self.pending)

    def rewind(self) -> None:
        self.now = 0.0

    def step(self) -> None:
        self.now = self.pending.popleft()


def spread(data: Sequence[float]) -> float:
    """Interquartile range over the median: the relative spread of the rounds (0 for one round)."""
    q1, median, q3 = np.quantile(np.asarray(data, float), [0.25, 0.5, 0.75])
    return float((q3 - q1) / median) if median > 0 else 0.0


def median_interval(data: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics around rank n/2.

    The rank of the median of n draws is Binomial(n, 1/2); its normal approximation gives the ranks
    n/2 -+ z sqrt(n) / 2 (clipped to the sample: with few rounds the interval is the whole range).
    """
    ordered = np.sort(np.asarray(data, float))
    n = len(ordered)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    low = max(math.floor(n / 2 - z * math.sqrt(n) / 2), 1)
    high = min(math.ceil(1 + n / 2 + z * math.sqrt(n) / 2), n)
    return float(ordered[low - 1]), float(ordered[high - 1])


def interval_halfwidth(data: Sequence[float]) -> float:
    """Half the median's confidence interval, relative to the median (0.02 = +-2%)."""
    low, high = median_interval(data)
    median = float(np.median(data))
    return (high - low) / 2 / median if median > 0 else 0.0


@dataclass(frozen=True)
class NoisePolicy:
    """When a measurement is re-measured, and how far: see `measure_stably`."""

    spread_limit: float = 0.05  # IQR / median above which more rounds are taken
    precision: float = 0.02  # the target: the median's confidence interval within +-precision
    extra_ms: float = 0.0  # time allowed for the extra rounds (0: never re-measure)


@dataclass(frozen=True)
class Stability:
    spread: float  # IQR / median over every round
    interval: float  # half-width of the median's 95% interval, relative
    extra_rounds: int  # rounds taken beyond the first batch
    noisy: bool  # spread above the limit, and the interval still wider than the precision

    def columns(self) -> dict[str, Any]:
        """What a row needs beyond latency_summary (which recomputes spread and interval from the data)."""
        return {"extra_rounds": self.extra_rounds, "noisy": self.noisy}


def measure_stably(target: Callable[[], Any], setup: Callable[[], None], rounds: int,
                   policy: NoisePolicy, timer: Callable[[], Any]) -> tuple[list[float], Stability]:
    """`rounds` rounds, then more while the spread is above the limit: (every round's seconds, stability).

    Extra rounds go through the same loop, in batches that double the rounds taken so far, within the
    time left (counted in the extra rounds' own durations).
    """
    data = time_rounds(target, setup, rounds, timer)
    first = len(data)

    def unsettled() -> bool:
        return spread(data) > policy.spread_limit and interval_halfwidth(data) > policy.precision

    while unsettled():
        left_ms = policy.extra_ms - sum(data[first:]) * 1e3  # the extra rounds' own time
        batch = min(len(data), MAX_ROUNDS - len(data), int(left_ms / (1e3 * float(np.median(data)))))
        if batch < 1:
            break
        data += time_rounds(target, setup, batch, timer)
    return data, Stability(spread(data), interval_halfwidth(data), len(data) - first, unsettled())


def latency_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """Median and 20/80 quantiles in ms from the `stats` of a pytest-benchmark JSON record (seconds, with
    per-round `data`), or of `round_stats`."""
    if not stats.get("data"):
        raise ValueError("benchmark stats without per-round data: write them with --benchmark-json "
                         "(or --benchmark-save-data)")
    data = stats["data"]
    return {
        "latency_ms": stats["median"] * 1e3,
        "latency_ms_p20": float(np.quantile(data, 0.2)) * 1e3,
        "latency_ms_p80": float(np.quantile(data, 0.8)) * 1e3,
        "rounds": int(stats["rounds"]),
        "spread_iqr": spread(data),
        "median_ci": interval_halfwidth(data),
    }


# --- an independent timer ---------------------------------------------------------------------------

def independent_median_ms(target: Callable[[], Any], setup: Callable[[], None], device: str,
                          budget_ms: float, grad_to_none: Sequence[torch.Tensor] | None = None) -> dict:
    """The median of `target` by a timer that shares no code with ours: reference_latency_ms, and the
    per-call times where the timer gives them (reference_times_ms).

    CPU: torch.utils.benchmark.Timer.blocked_autorange, on as many threads as ours (its default is one).
    Its rounds are blocks of calls; `setup` runs once, before them. CUDA: triton.testing.do_bench, which
    warms up, flushes the L2 cache before each call and times it with CUDA events; `grad_to_none` are
    the tensors whose gradients it resets before each call (a forward+backward call).
    """
    if device_type(device) == "cuda":
        return _do_bench_median_ms(target, budget_ms, grad_to_none)
    return _blocked_autorange_median_ms(target, setup, budget_ms)


def _blocked_autorange_median_ms(target, setup, budget_ms: float) -> dict:
    from torch.utils.benchmark import Timer

    setup()
    timer = Timer(stmt="target()", globals={"target": target}, num_threads=torch.get_num_threads())
    measured = timer.blocked_autorange(min_run_time=budget_ms / 1e3)
    return {"reference_latency_ms": measured.median * 1e3,
            "reference_times_ms": [t * 1e3 for t in measured.times],
            "reference_timer": "torch.utils.benchmark.Timer.blocked_autorange"}


def _do_bench_median_ms(target, budget_ms: float, grad_to_none) -> dict:
    from triton.testing import do_bench

    # quantiles= exists in every triton release with do_bench's time-based warmup/rep (2.1 on);
    # return_mode="median" came later. A list of three quantiles comes back as a list.
    p20, median, p80 = do_bench(target, warmup=max(1, round(budget_ms / 4)), rep=max(1, round(budget_ms)),
                                grad_to_none=list(grad_to_none) if grad_to_none else None,
                                quantiles=[0.2, 0.5, 0.8])
    return {"reference_latency_ms": float(median), "reference_times_ms": None,
            "reference_timer": "triton.testing.do_bench"}


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int, budget_ms: float) -> float:
    """TFLOP/s of a size^3 matmul, timed by the same warm-up, flush and loop as every case."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    flush = L2Flush(device)
    target = lambda: torch.mm(a, b, out=out)  # noqa: E731
    warm_up(target, flush, device, warmup_ms=budget_ms / 4)
    flush()
    _, estimate_ms = timed_call(target, device)
    durations = time_rounds(target, flush, rounds_for(budget_ms, estimate_ms), timer_for(device))
    return 2 * size**3 / statistics.median(durations) / 1e12
