"""The timing engine (harness.timing's own loop, and the rounds it hands to pytest-benchmark) and the
memory cap."""

import inspect
import json
import math
import statistics
import subprocess
import sys
import textwrap
import time
import types
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness import memory, timing

pytest_plugins = ("pytester",)  # runs a pytest-benchmark session in this process


def test_latency_summary_reads_pytest_benchmark_stats():
    stats = {"median": 0.002, "rounds": 5, "data": [0.001, 0.002, 0.003, 0.004, 0.0015]}
    summary = timing.latency_summary(stats)
    # IQR: numpy's linear quantiles 0.0015 and 0.003, over the median 0.002.
    assert summary == pytest.approx({"latency_ms": 2.0, "latency_ms_p20": 1.4, "latency_ms_p80": 3.2,
                                     "rounds": 5, "spread_iqr": 0.75, "median_ci": 0.75})
    with pytest.raises(ValueError, match="per-round data"):
        timing.latency_summary({"median": 0.002, "rounds": 5})


def test_rounds_fill_the_budget_within_bounds():
    assert timing.rounds_for(budget_ms=100, estimate_ms=2) == 50
    assert timing.rounds_for(budget_ms=100, estimate_ms=500) == timing.MIN_ROUNDS
    assert timing.rounds_for(budget_ms=1e9, estimate_ms=1e-9) == timing.MAX_ROUNDS


def test_the_loop_runs_setup_before_every_round_and_times_the_call_alone():
    events = []
    call, setup = (lambda: events.append("call") or 7), (lambda: events.append("setup"))
    durations = timing.time_rounds(call, setup, 4, timing.timer_for("cpu"))
    assert events == ["setup", "call"] * 4 and len(durations) == 4 and all(t > 0 for t in durations)
    assert timing.timer_for("cpu") is time.perf_counter
    # The setup moves the clock by a second and the call by a millisecond: only the call is timed.
    clock = ScriptedClock([1.0, 1e-3] * 3)
    assert timing.time_rounds(clock.target, clock.target, 3, clock) == pytest.approx([1e-3] * 3)


def outputs_alive(loop) -> tuple[list[int], list[int]]:
    """How many earlier outputs are alive at each call of `loop(target, setup, rounds, timer)`, and at
    each reading of its timer (two a round)."""
    class Output:
        pass

    outputs, alive_at_call, alive_at_timer = [], [], []

    def call():
        alive_at_call.append(sum(ref() is not None for ref in outputs))
        output = Output()
        outputs.append(weakref.ref(output))
        return output

    def timer():
        alive_at_timer.append(sum(ref() is not None for ref in outputs))
        return time.perf_counter()

    loop(call, lambda: None, 4, timer)
    return alive_at_call, alive_at_timer


def test_no_round_runs_while_the_previous_rounds_output_is_alive():
    alive_at_call, alive_at_timer = outputs_alive(timing.time_rounds)
    assert alive_at_call == [0, 0, 0, 0]
    assert alive_at_timer == [0] * 8  # dropped as the call returns, inside its round (as before)


def test_a_loop_that_keeps_the_output_fails_that_check():
    def keeping(target, setup, rounds, timer):  # pytest-benchmark pedantic's way: the result stays bound
        for _ in range(rounds):
            setup()
            start = timer()
            result = target()
            timer() - start
        return result

    alive_at_call, _ = outputs_alive(keeping)
    assert alive_at_call == [0, 1, 1, 1]


def test_the_rounds_become_the_stats_rows_are_made_from():
    stats = timing.round_stats([0.003, 0.001, 0.002, 0.004])
    assert stats == {"data": [0.003, 0.001, 0.002, 0.004], "median": 0.0025, "rounds": 4, "iterations": 1}
    assert timing.latency_summary(stats)["latency_ms"] == pytest.approx(2.5)


def test_the_replay_clock_gives_back_each_round_exactly():
    """The loop pytest-benchmark's pedantic runs, in the shape it runs it: setup, start, call, end."""
    clock, measured = timing.ReplayClock(), [0.0123, 1e-7, 3.3, 0.5]
    rounds, replayed = clock.load(measured), []
    for _ in range(rounds):
        assert clock.rewind() is None  # a setup's return value would be taken for call arguments
        start = clock()
        clock.step()
        replayed.append(clock() - start)
    assert replayed == measured and rounds == 4 and not clock.pending
    with pytest.raises(IndexError):
        clock.step()  # a round more than was measured is an error, not a repeat


REPLAY_MODULE = """
import pytest
from harness import timing

REPLAY = timing.ReplayClock()


@pytest.mark.benchmark(timer=REPLAY)
def test_replayed(benchmark):
    benchmark.extra_info.update({"figure": 42})
    benchmark.pedantic(REPLAY.step, setup=REPLAY.rewind, rounds=REPLAY.load({durations}), iterations=1,
                       warmup_rounds=0)
"""


# pytest-benchmark's hooks for the JSON file's machine and commit sections (py-cpuinfo and git take seconds).
FAST_REPORT_HOOKS = """
def pytest_benchmark_generate_machine_info(config):
    return {}


def pytest_benchmark_generate_commit_info(config):
    return {}
"""


def test_pytest_benchmark_records_exactly_the_rounds_it_is_handed(pytester, monkeypatch):
    """The route of suites/bench_throughput.py through pytest-benchmark's public fixture and marker: its
    JSON holds our rounds as measured, and its statistics are computed from them."""
    durations = [0.0021, 0.0013, 0.0042, 0.0017, 0.0019]
    pytester.makepyfile(test_replay=REPLAY_MODULE.replace("{durations}", repr(durations)))
    pytester.makeconftest(FAST_REPORT_HOOKS)
    report = pytester.path / "bench.json"
    # A process of its own, not an xdist worker's: pytest-benchmark turns itself off in one
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist",
                                           f"--benchmark-json={report}")
    result.assert_outcomes(passed=1)
    (bench,) = json.loads(report.read_text())["benchmarks"]
    assert bench["stats"]["data"] == durations and bench["stats"]["rounds"] == len(durations)
    assert bench["stats"]["median"] == statistics.median(durations) and bench["stats"]["iterations"] == 1
    assert bench["extra_info"] == {"figure": 42}
    assert bench["options"]["timer"] == "replayed_rounds"  # the row's `timer` column names the real one
    assert timing.latency_summary(bench["stats"]) == timing.latency_summary(timing.round_stats(durations))


def test_warm_up_runs_once_then_until_the_budget_is_spent():
    calls, _ = timing.warm_up(lambda: None, lambda: None, "cpu", warmup_ms=0)
    assert calls == 1
    started = time.perf_counter()
    n, first_ms = timing.warm_up(lambda: time.sleep(0.002), lambda: None, "cpu", warmup_ms=15)
    assert (time.perf_counter() - started) * 1e3 >= 15 and n >= 1 and first_ms > 0


def test_matmul_peak_is_a_positive_rate():
    tflops = timing.matmul_peak_tflops("cpu", torch.float32, 64, budget_ms=5)
    assert math.isfinite(tflops) and tflops > 0


def in_fresh_process(code: str) -> str:
    """stdout of `code` run by a new interpreter. Address space and resident pages depend on the heap a
    long test session leaves: glibc serves a large block from a freed region already mapped and resident,
    so a cap or a high-water mark measured there can see nothing (as a fresh worker process would)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_a_real_allocation_fails_under_a_cpu_memory_cap():
    out = in_fresh_process("""
        import torch
        from harness import memory
        try:
            with memory.memory_cap("cpu", 64):
                torch.empty(512 * memory.MIB, dtype=torch.uint8).fill_(1)
        except MemoryError as e:
            print(f"MemoryError: {e}")
        with memory.memory_cap("cpu", 64):
            torch.empty(8 * memory.MIB, dtype=torch.uint8).fill_(1)  # within the cap
        torch.empty(512 * memory.MIB, dtype=torch.uint8).fill_(1)  # the cap is lifted afterwards
        print("lifted")
    """)
    assert out.startswith("MemoryError: out of memory under a cap of 64 MiB") and out.endswith("lifted\n")


def test_the_cuda_cap_allows_the_cap_more_than_the_allocator_holds(monkeypatch):
    """A fake torch.cuda: 80 GiB device, 10 GiB already reserved; a 4096 MiB cap allows 14 GiB in all."""
    gib, fractions = 2**30, []
    fake = SimpleNamespace(
        get_device_properties=lambda device: SimpleNamespace(total_memory=80 * gib),
        memory_reserved=lambda device: 10 * gib,
        set_per_process_memory_fraction=lambda fraction, device: fractions.append((fraction, str(device))),
    )
    monkeypatch.setattr(memory.torch, "cuda", fake)
    with memory.memory_cap("cuda:0", 4096):
        assert fractions == [(14 / 80, "cuda:0")]
    assert fractions[-1] == (1.0, "cuda:0")  # lifted afterwards
    fractions.clear()
    with memory.memory_cap("cuda:0", 100 * 1024):  # more than the device has: no cap below the device
        assert fractions == [(1.0, "cuda:0")]


# --- noise ----------------------------------------------------------------------------------------------

def test_spread_and_the_median_interval():
    assert timing.spread([1.0, 1.0, 1.0]) == 0.0
    data = np.arange(1.0, 101.0)  # 1..100: ranks 50 -+ 1.96 * 10 / 2 -> order statistics 40 and 61
    assert timing.median_interval(data) == (40.0, 61.0)
    assert timing.interval_halfwidth(data) == pytest.approx((61 - 40) / 2 / 50.5)
    assert timing.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # few rounds: the whole range


class ScriptedClock:
    """A timer whose rounds last what the script says: target() advances it by the next duration."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, iter(durations)

    def __call__(self) -> float:
        return self.now

    def target(self) -> None:
        self.now += next(self.durations)


def test_a_quiet_measurement_is_not_remeasured():
    clock = ScriptedClock([1e-3] * 10)
    policy = timing.NoisePolicy(spread_limit=0.05, precision=0.02, extra_ms=1000)
    data, result = timing.measure_stably(clock.target, lambda: None, 5, policy, clock)
    assert result == timing.Stability(0.0, 0.0, 0, False)
    assert data == [1e-3] * 5


def test_a_noisy_measurement_takes_rounds_until_its_interval_is_tight():
    # 5 rounds spread widely, then a steady 1 ms: the median's interval narrows as rounds accumulate.
    clock = ScriptedClock([1e-3, 2e-3, 1e-3, 3e-3, 1e-3] + [1e-3] * 1000)
    policy = timing.NoisePolicy(spread_limit=0.05, precision=0.02, extra_ms=1000)
    data, result = timing.measure_stably(clock.target, lambda: None, 5, policy, clock)
    assert result.extra_rounds == len(data) - 5 > 0 and not result.noisy
    assert timing.interval_halfwidth(data) <= 0.02 or timing.spread(data) <= 0.05
    assert data[:5] == [1e-3, 2e-3, 1e-3, 3e-3, 1e-3]  # the first batch, then the extra rounds after it
    assert statistics.median(data) == pytest.approx(1e-3)


def test_a_measurement_still_noisy_when_its_budget_runs_out_is_flagged():
    clock = ScriptedClock([1e-3, 3e-3] * 100)  # alternating: no number of rounds settles it
    policy = timing.NoisePolicy(spread_limit=0.05, precision=0.02, extra_ms=20)
    data, result = timing.measure_stably(clock.target, lambda: None, 4, policy, clock)
    assert result.noisy and result.spread > 0.05
    assert 0 < result.extra_rounds == len(data) - 4 and sum(data[4:]) <= 0.020 + 1e-12  # within budget


def test_no_remeasuring_without_a_budget():
    clock = ScriptedClock([1e-3, 3e-3] * 10)
    data, result = timing.measure_stably(clock.target, lambda: None, 4, timing.NoisePolicy(), clock)
    assert result.noisy and result.extra_rounds == 0 and len(data) == 4


# --- the independent timers ------------------------------------------------------------------------------

def test_blocked_autorange_times_on_our_thread_count():
    seen = []
    target = lambda: seen.append(torch.get_num_threads())  # noqa: E731
    measured = timing.independent_median_ms(target, lambda: None, "cpu", budget_ms=5)
    assert measured["reference_timer"] == "torch.utils.benchmark.Timer.blocked_autorange"
    assert seen and set(seen) == {torch.get_num_threads()}  # its default would be one thread
    assert measured["reference_latency_ms"] > 0 and len(measured["reference_times_ms"]) >= 1


def triton_do_bench_3_9(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
    """triton 3.9's signature (triton/testing.py), its argument checks, and a scripted result."""
    assert return_mode in ["min", "max", "mean", "median", "all"]
    return _fake_bench(fn, warmup, rep, grad_to_none, quantiles)


def triton_do_bench_2_1(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, fast_flush=True,
                        return_mode="mean"):
    """triton 2.1's signature: `fast_flush` sits before `return_mode`, which has no "all"."""
    assert return_mode in ["min", "max", "mean", "median"]
    return _fake_bench(fn, warmup, rep, grad_to_none, quantiles)


FAKE_CALLS = []


def _fake_bench(fn, warmup, rep, grad_to_none, quantiles):
    assert isinstance(warmup, int) and isinstance(rep, int) and warmup >= 1 and rep >= 1
    assert grad_to_none is None or all(isinstance(t, torch.Tensor) for t in grad_to_none)
    fn()
    FAKE_CALLS.append({"warmup": warmup, "rep": rep, "grad_to_none": grad_to_none, "quantiles": quantiles})
    return [1.0, 2.0, 4.0] if len(quantiles) == 3 else 2.0  # ms, like triton: a list for a list


@pytest.mark.parametrize("do_bench", [triton_do_bench_3_9, triton_do_bench_2_1])
def test_do_bench_is_called_with_its_real_signature(monkeypatch, do_bench):
    testing = types.ModuleType("triton.testing")
    testing.do_bench = do_bench
    triton = types.ModuleType("triton")
    triton.testing = testing
    monkeypatch.setitem(sys.modules, "triton", triton)
    monkeypatch.setitem(sys.modules, "triton.testing", testing)
    FAKE_CALLS.clear()
    called, leaf = [], torch.zeros(3, requires_grad=True)
    measured = timing.independent_median_ms(lambda: called.append(1), lambda: None, "cuda", budget_ms=200,
                                            grad_to_none=[leaf])
    assert measured == {"reference_latency_ms": 2.0, "reference_times_ms": None,
                        "reference_timer": "triton.testing.do_bench"}
    (call,) = FAKE_CALLS
    assert call["warmup"] == 50 and call["rep"] == 200 and call["quantiles"] == [0.2, 0.5, 0.8]
    assert call["grad_to_none"] == [leaf] and called == [1]
    assert list(inspect.signature(do_bench).parameters)[:5] == ["fn", "warmup", "rep", "grad_to_none",
                                                                  "quantiles"]


# --- CUDA ---------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.smoke
def test_cuda_event_timer_measures_device_time():
    start = timing.cuda_event_timer()
    torch.cuda._sleep(10_000_000)  # a kernel that spins ~10M cycles: several ms, launched asynchronously
    elapsed = timing.cuda_event_timer() - start
    assert 1e-4 < elapsed < 10  # seconds: the sleep was waited for, and the unit is seconds, not ms


@pytest.mark.cuda
@pytest.mark.smoke
def test_l2_flush_overwrites_more_than_the_l2_cache():
    flush = timing.L2Flush("cuda")
    assert flush.nbytes >= 2 * torch.cuda.get_device_properties(0).L2_cache_size
    assert flush() is None


@pytest.mark.cuda
@pytest.mark.smoke
def test_timer_agrees_with_triton_do_bench():
    """Median of our loop vs triton.testing.do_bench on one matmul: within 10% (both flush L2, both
    use CUDA events; the difference left is the loop around them)."""
    do_bench = pytest.importorskip("triton.testing").do_bench
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty_like(a)
    target = lambda: torch.mm(a, b, out=out)  # noqa: E731
    flush = timing.L2Flush("cuda")
    timing.warm_up(target, flush, "cuda", warmup_ms=25)
    rounds = timing.rounds_for(200, timing.timed_call(target, "cuda")[1])
    ours_ms = statistics.median(timing.time_rounds(target, flush, rounds, timing.cuda_event_timer)) * 1e3
    theirs_ms = do_bench(target, warmup=25, rep=200, return_mode="median")
    assert ours_ms == pytest.approx(theirs_ms, rel=0.10)


@pytest.mark.cuda
def test_a_real_allocation_fails_under_a_cuda_memory_cap():
    with pytest.raises(torch.OutOfMemoryError), memory.memory_cap("cuda", 256):
        torch.empty(1024 * memory.MIB, dtype=torch.uint8, device="cuda")
    torch.cuda.empty_cache()
    torch.empty(1024 * memory.MIB, dtype=torch.uint8, device="cuda")  # the cap is lifted afterwards
