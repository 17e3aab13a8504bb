"""Throughput and memory: latency, tokens/s, TFLOP/s, memory, power and energy of every variant.

One module per job:

- `planning`: the `Case` model, the plan of a profile, the dtypes a device is measured in, the time-cap
  rule that skips the longer lengths of a group, and each case's cost (for `--shard`);
- `workloads`: the timed call of a case (fwd, fwd_bwd, decode; kernel or layer level);
- `measuring`: one case measured (the matmul peak, warm-up, timed rounds, the fidelity side-by-side, the
  energy phase) and its row (`run_case`);
- `benchmark_json`: the rows of a `pytest suites/bench_throughput.py --benchmark-json` file;
- `summary`: each variant's largest N that ran, printed after a run;
- `suite`: the suite as the harness sees it (harness.suite): the members above, and the memory-frontier
  search of `--find-max-n` (suites.frontier, which builds on planning, workloads and measuring).

This package module imports none of them, so that suites.frontier can build on them while `suite`
offers its search.
"""
