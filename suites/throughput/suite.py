"""The throughput suite as the harness runs it (the `throughput` entry point of `attnbench.suites`):
the members harness.suite asks of a suite, each from the module of suites.throughput that does its job,
and the memory-frontier search of `attnbench run --suite throughput --find-max-n` (suites.frontier)."""

from __future__ import annotations

from suites.frontier import find_max_n
from suites.throughput.benchmark_json import import_benchmark_json
from suites.throughput.measuring import run_case
from suites.throughput.planning import case_cost, estimate, plan
from suites.throughput.summary import summarize

TIMEOUT_S = 300.0  # per case: the first call may compile FlexAttention or autotune a Triton kernel
# --kv-heads: grouped-query attention; --model: a model preset's shape; --compile: the compiled series;
# --lengths: ragged batches (planning.plan)
OPTIONS: tuple[str, ...] = ("kv_heads", "model", "compiled", "lengths")

__all__ = ["OPTIONS", "TIMEOUT_S", "case_cost", "estimate", "find_max_n", "import_benchmark_json", "plan",
           "run_case", "summarize"]
