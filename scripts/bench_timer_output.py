"""Benchmark: does a timed call run slower while the previous call's output is still alive?

    python scripts/bench_timer_output.py                          # linear at 4096, 12 turns
    python scripts/bench_timer_output.py -v flash-sdpa -n 8192 --turns 6

pytest-benchmark's pedantic loop keeps each round's output until the next round's call has returned;
timeit (blocked_autorange) and triton's do_bench drop it at once. This times one CPU standard fidelity
case three ways, in interleaved turns of about 250 ms each: a loop that keeps the output as pedantic does
(`rounds_keeping_output`, the timing engine before commit d16de61), harness.timing.time_rounds (the
output dropped) and blocked_autorange. Printed: the median and 20th-80th percentiles of each, and each
median over blocked_autorange's.
"""

from __future__ import annotations

import argparse

import numpy as np

from harness import timing
from suites.throughput.planning import plan
from suites.throughput.workloads import build_workload

TURN_MS = 250.0


def rounds_keeping_output(target, setup, rounds: int, timer) -> list[float]:
    """time_rounds, except that each round's output stays bound through the next round's call."""
    durations, output = [], None
    for _ in range(rounds):
        setup()
        start = timer()
        output = target()
        durations.append(timer() - start)
    del output
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--variant", default="linear")
    parser.add_argument("-n", "--seq-len", type=int, default=4096)
    parser.add_argument("--turns", type=int, default=12)
    args = parser.parse_args()
    if args.turns < 1:
        parser.exit(2, f"{parser.prog}: error: --turns must be at least 1, got {args.turns}\n")
    case = next((c for c in plan("standard", "cpu")
                 if c.kind == "fidelity" and c.variant == args.variant and c.seq_len == args.seq_len), None)
    if case is None:
        parser.exit(2, f"{parser.prog}: error: no CPU standard fidelity case {args.variant} at N = "
                       f"{args.seq_len}\n")
    work = build_workload(case)
    work.call()  # warm-up
    rounds = timing.rounds_for(TURN_MS, timing.timed_call(work.call, "cpu")[1])
    kept, dropped, theirs = [], [], []
    for _ in range(args.turns):
        kept += rounds_keeping_output(work.call, work.reset, rounds, timing.timer_for("cpu"))
        dropped += timing.time_rounds(work.call, work.reset, rounds, timing.timer_for("cpu"))
        theirs += timing.independent_median_ms(work.call, work.reset, "cpu", TURN_MS)["reference_times_ms"]
    reference = np.median(theirs)
    for name, times_ms in (("output kept (as pedantic)", np.array(kept) * 1e3),
                           ("output dropped (time_rounds)", np.array(dropped) * 1e3),
                           ("blocked_autorange", np.array(theirs))):
        p20, median, p80 = np.quantile(times_ms, [0.2, 0.5, 0.8])
        print(f"{case.variant} N={case.seq_len} {name:30s} median {median:8.3f} ms [{p20:.3f}, {p80:.3f}] "
              f"n={len(times_ms):4d}  / blocked_autorange {median / reference:.3f}")


if __name__ == "__main__":
    main()
