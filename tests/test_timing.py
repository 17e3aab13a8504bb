"""The timing engine (pytest-benchmark's pedantic loop driven by harness.timing) and the memory cap."""

import math
import time
from types import SimpleNamespace

import pytest
import torch

from harness import memory, timing


def test_latency_summary_reads_pytest_benchmark_stats():
    stats = {"median": 0.002, "rounds": 5, "data": [0.001, 0.002, 0.003, 0.004, 0.0015]}
    summary = timing.latency_summary(stats)
    assert summary == pytest.approx({"latency_ms": 2.0, "latency_ms_p20": 1.4, "latency_ms_p80": 3.2,
                                     "rounds": 5})
    with pytest.raises(ValueError, match="per-round data"):
        timing.latency_summary({"median": 0.002, "rounds": 5})


def test_rounds_fill_the_budget_within_bounds():
    assert timing.rounds_for(budget_ms=100, estimate_ms=2) == 50
    assert timing.rounds_for(budget_ms=100, estimate_ms=500) == timing.MIN_ROUNDS
    assert timing.rounds_for(budget_ms=1e9, estimate_ms=1e-9) == timing.MAX_ROUNDS


def test_pedantic_loop_runs_setup_before_every_round():
    events = []
    fixture = timing.make_fixture("unit", timing.timer_for("cpu"))
    call, setup = (lambda: events.append("call") or 7), (lambda: events.append("setup"))
    result = timing.time_rounds(fixture, call, setup, 4)
    assert result == 7
    assert events == ["setup", "call"] * 4
    record = fixture.stats.as_dict()
    assert record["stats"]["rounds"] == 4 and len(record["stats"]["data"]) == 4
    assert record["stats"]["iterations"] == 1 and record["options"]["timer"] == "perf_counter"
    assert all(t > 0 for t in record["stats"]["data"])


def test_a_setup_returning_a_value_is_not_taken_for_arguments():
    buffer_flush = timing.L2Flush("cpu")
    assert buffer_flush() is None and buffer_flush.nbytes == 0  # pedantic would unpack a return value


def test_warm_up_runs_once_then_until_the_budget_is_spent():
    calls, _ = timing.warm_up(lambda: None, lambda: None, "cpu", warmup_ms=0)
    assert calls == 1
    started = time.perf_counter()
    n, first_ms = timing.warm_up(lambda: time.sleep(0.002), lambda: None, "cpu", warmup_ms=15)
    assert (time.perf_counter() - started) * 1e3 >= 15 and n >= 1 and first_ms > 0


def test_matmul_peak_is_a_positive_rate():
    tflops = timing.matmul_peak_tflops("cpu", torch.float32, 64, budget_ms=5)
    assert math.isfinite(tflops) and tflops > 0


def test_a_real_allocation_fails_under_a_cpu_memory_cap():
    with pytest.raises(MemoryError, match="cap of 64 MiB"), memory.memory_cap("cpu", 64):
        torch.empty(512 * memory.MIB, dtype=torch.uint8).fill_(1)
    with memory.memory_cap("cpu", 64):
        torch.empty(8 * memory.MIB, dtype=torch.uint8).fill_(1)  # within the cap
    torch.empty(512 * memory.MIB, dtype=torch.uint8).fill_(1)  # the cap is lifted afterwards


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


def test_cpu_memory_figures_are_null():
    memory.reset_peaks("cpu")
    assert memory.read_peaks("cpu") == {"mem_alloc_peak_bytes": None, "mem_reserved_peak_bytes": None}


# --- CUDA ---------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_event_timer_measures_device_time():
    start = timing.cuda_event_timer()
    torch.cuda._sleep(10_000_000)  # a kernel that spins ~10M cycles: several ms, launched asynchronously
    elapsed = timing.cuda_event_timer() - start
    assert 1e-4 < elapsed < 10  # seconds: the sleep was waited for, and the unit is seconds, not ms


@pytest.mark.cuda
def test_l2_flush_overwrites_more_than_the_l2_cache():
    flush = timing.L2Flush("cuda")
    assert flush.nbytes >= 2 * torch.cuda.get_device_properties(0).L2_cache_size
    assert flush() is None


@pytest.mark.cuda
def test_timer_agrees_with_triton_do_bench():
    """Median of our loop vs triton.testing.do_bench on one matmul: within 10% (both flush L2, both
    use CUDA events; the difference left is the loop around them)."""
    do_bench = pytest.importorskip("triton.testing").do_bench
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = torch.empty_like(a)
    target = lambda: torch.mm(a, b, out=out)  # noqa: E731
    flush = timing.L2Flush("cuda")
    timing.warm_up(target, flush, "cuda", warmup_ms=25)
    fixture = timing.make_fixture("mm", timing.cuda_event_timer)
    timing.time_rounds(fixture, target, flush, timing.rounds_for(200, timing.timed_call(target, "cuda")[1]))
    ours_ms = fixture.stats.stats.median * 1e3
    theirs_ms = do_bench(target, warmup=25, rep=200, return_mode="median")
    assert ours_ms == pytest.approx(theirs_ms, rel=0.10)


@pytest.mark.cuda
def test_a_real_allocation_fails_under_a_cuda_memory_cap():
    with pytest.raises(torch.OutOfMemoryError), memory.memory_cap("cuda", 256):
        torch.empty(1024 * memory.MIB, dtype=torch.uint8, device="cuda")
    torch.cuda.empty_cache()
    torch.empty(1024 * memory.MIB, dtype=torch.uint8, device="cuda")  # the cap is lifted afterwards
