"""Benchmark (not a test) of `--executor ray` against the local executor, on this machine's CPU.

1. Overhead per case: trivial cases (tests.fake_suite, action ok: no work) through each executor. Each
   case is its own chain, so under Ray each is one task. Per-case cost = (wall(N_LARGE) - wall(N_SMALL)) /
   (N_LARGE - N_SMALL): worker and cluster start-up cancel out.
2. Cases per minute: the CPU quick throughput plan through the local executor (torch's default threads,
   and one thread as a Ray task has), a one-node Ray cluster and a two-node Ray cluster on this machine
   (each node --num-cpus 1; a case takes one CPU, one torch thread).

    python scripts/bench_executors.py [--repeats 3] [--skip-plan | --skip-overhead]

Prints one line per measurement and a summary (median, min-max) with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import cluster, runner, store  # noqa: E402
from suites.throughput import planning, suite  # noqa: E402
from tests import fake_suite  # noqa: E402
from tests.ray_cluster import LocalCluster  # noqa: E402

N_SMALL, N_LARGE = 20, 120


class TrivialCase(fake_suite.Case):
    """A case of its own chain: no OOM group."""

    def oom_key(self):
        return None, None


def trivial(n: int) -> list[TrivialCase]:
    return [TrivialCase(action="ok", seq_len=i + 1) for i in range(n)]


def timed(cases, suite, executor, root: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=root))
    started = time.perf_counter()
    summary = runner.run(cases, suite, out, progress=False, executor=executor)
    wall = time.perf_counter() - started
    assert sum(summary.counts.values()) == len(cases) == len(store.load(out)), summary.counts
    shutil.rmtree(out)
    return wall


def spread(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"median {statistics.median(values):.2f} (min {low:.2f}, max {high:.2f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-plan", action="store_true", help="only the per-case overhead")
    parser.add_argument("--skip-overhead", action="store_true", help="only the quick throughput plan")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="attnbench-bench-"))
    results: dict[str, list[float]] = {}
    plan = planning.plan("quick", "cpu")
    clusters = []
    try:
        with_one = LocalCluster(root / "one", nodes=1)
        with_two = LocalCluster(root / "two", nodes=2)
        for c in (with_one, with_two):
            clusters.append(c)
            c.root.mkdir(parents=True)
            c.start()
        executors = {"local": lambda: runner.LocalExecutor(),
                     "ray, 1 node": lambda: cluster.RayExecutor(with_one.address),
                     "ray, 2 nodes": lambda: cluster.RayExecutor(with_two.address)}
        for repeat in range(args.repeats):
            for name, make in executors.items():
                if args.skip_overhead:
                    break
                small = timed(trivial(N_SMALL), "tests.fake_suite", make(), root)
                large = timed(trivial(N_LARGE), "tests.fake_suite", make(), root)
                per_case_ms = (large - small) / (N_LARGE - N_SMALL) * 1000
                results.setdefault(f"overhead per trivial case, {name} (ms)", []).append(per_case_ms)
                print(f"[{repeat}] {name}: {N_SMALL} cases {small:.2f} s, {N_LARGE} cases {large:.2f} s, "
                      f"{per_case_ms:.1f} ms/case; load {os.getloadavg()[0]:.1f}", flush=True)
            if args.skip_plan:
                continue
            for name, make in {**executors, "local, 1 thread": executors["local"]}.items():
                one_thread = name == "local, 1 thread"
                if one_thread:
                    os.environ["OMP_NUM_THREADS"] = "1"  # read by torch in the spawned worker
                try:
                    wall = timed(plan, suite.__name__, make(), root)
                finally:
                    if one_thread:
                        del os.environ["OMP_NUM_THREADS"]
                rate = len(plan) / wall * 60
                results.setdefault(f"CPU quick throughput plan ({len(plan)} cases), {name} (cases/min)",
                                   []).append(rate)
                print(f"[{repeat}] {name}: quick throughput plan {wall:.1f} s, {rate:.1f} cases/min; "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for c in clusters:
            c.stop()
        shutil.rmtree(root, ignore_errors=True)
    print("\nsummary")
    for what, values in results.items():
        print(f"{what}: {spread(values)}")


if __name__ == "__main__":
    main()
