"""The throughput suite as a pytest-benchmark module: collected only when named on the command line.

    ATTNBENCH_DEVICE=cuda ATTNBENCH_PROFILE=standard \\
        pytest suites/bench_throughput.py --benchmark-json=bench.json
    attnbench import-benchmark bench.json --out results/run

Selection by environment variables (same meaning as `attnbench run` options): ATTNBENCH_DEVICE (cpu or
cuda, default cuda when present), ATTNBENCH_PROFILE (quick), ATTNBENCH_VARIANTS, ATTNBENCH_SEQ_LENS,
ATTNBENCH_DTYPES (comma-separated). pytest's -k filters further by case id.

Each case runs `suites.throughput.measuring.measure_case`: the same loop, flush and timer as
`attnbench run` (harness.timing; CUDA events on cuda, perf_counter on cpu), with one RunContext for the
session (no run directory: the matmul peaks are measured once per pytest process). Its rounds (with the
re-measured ones, and a fidelity case's every turn) are handed to pytest's `benchmark` fixture through
its public interface only: `benchmark.pedantic` with a timer, set by the `benchmark` marker, that replays
them (harness.timing.ReplayClock), and `benchmark.extra_info` for every other figure. So
`--benchmark-timer` has no effect here, and pytest-benchmark's statistics and JSON hold exactly the rounds
`attnbench run` would have measured. Regression gating works as with any pytest-benchmark suite:
`--benchmark-autosave`, then `--benchmark-compare --benchmark-compare-fail median:10%`. Unlike
`attnbench run`, cases run in the pytest process: unsupported and out-of-memory cases are skipped with
their reason, other failures fail the test.
"""

from __future__ import annotations

import os

import pytest
import torch

from harness import env, registry, timing
from harness.context import RunContext
from harness.registry import Unsupported
from harness.runner import is_oom, one_line
from suites.throughput.measuring import measure_case
from suites.throughput.planning import Case, plan


def _listed(name: str) -> list[str] | None:
    value = os.environ.get(name, "").strip()
    return [item.strip() for item in value.split(",") if item.strip()] or None


def selected_cases() -> list[Case]:
    device = os.environ.get("ATTNBENCH_DEVICE") or env.default_device()
    seq_lens = _listed("ATTNBENCH_SEQ_LENS")
    return plan(
        profile=os.environ.get("ATTNBENCH_PROFILE", "quick"), device=device,
        variants=_listed("ATTNBENCH_VARIANTS"), dtypes=_listed("ATTNBENCH_DTYPES"),
        seq_lens=[int(n) for n in seq_lens] if seq_lens else None,
    )


# The timer of every case's record: it replays the rounds measure_case timed (one test at a time).
REPLAY = timing.ReplayClock()


def _param(case: Case):
    # Grouped by configuration, so pytest-benchmark's table sets the variants side by side.
    group = case.slug().removeprefix(f"{case.variant}-")
    return pytest.param(case, id=case.slug(), marks=pytest.mark.benchmark(timer=REPLAY, group=group))


@pytest.fixture(scope="session")
def run_context() -> RunContext:
    return RunContext()


@pytest.mark.parametrize("case", [_param(c) for c in selected_cases()])
def test_throughput(benchmark, run_context: RunContext, case: Case) -> None:
    ok, reason = registry.get(case.variant).supports(case.device, case.dtype, case.head_dim, case.causal)
    if not ok:
        pytest.skip(f"unsupported: {reason}")
    try:
        durations, extra_info = measure_case(case, run_context)
    except Unsupported as e:
        pytest.skip(f"unsupported: {e}")
    except Exception as e:
        if not is_oom(e):
            raise
        message = f"oom: {one_line(e)}"  # outside the handler, so the traceback's tensors are freed
    else:
        benchmark.extra_info.update(extra_info)
        benchmark.pedantic(REPLAY.step, setup=REPLAY.rewind, rounds=REPLAY.load(durations), iterations=1,
                           warmup_rounds=0)
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    pytest.skip(message)
