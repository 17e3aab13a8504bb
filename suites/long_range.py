"""Long-range suite: the learned tasks swept over sequence length, accuracy against N per variant.

What runs is in suites.grids: in the CPU standard profile the two findings about reach, induction heads
trained at L and tested up to 16L and passkey retrieval over context length and depth; elsewhere MQAR and
selective copying trained and tested at each length, passkey trained at one length and tested at every
(length, depth), and ListOps at LRA's 2K. Cases, models, training and rows are the accuracy suite's
(suites.accuracy). Pathfinder is not implemented.
"""

from __future__ import annotations

from harness import compiling
from harness.context import RunContext
from suites.accuracy import (
    LEARNED_OPTIONS,
    AccuracyCase,
    TaskCase,
    case_cost,
    check_profile,
    chosen_specs,
    estimate,
    filtered,
    learned_variants,
    needs,
    recipes,
    run_task,
    summarize,
    task_cases,
)

# Accuracies and errors, not speeds: a run may resume on another CPU (or GPU) model, each row naming its
# machine (a training its time budget stopped says so in stop_reason: that one depends on the speed).
MACHINE_BOUND = False
TIMEOUT_S = 1800.0  # twice a CPU training's time budget (900 s): one its budget stops still gets evaluated
Case = TaskCase
OPTIONS = LEARNED_OPTIONS  # no Part A here, so no compiled series (--compile)


def plan(profile: str, device: str, variants: list[str] | None = None, seq_lens: list[int] | None = None,
         dtypes: list[str] | None = None, seeds: int | None = None, findings: list[str] | None = None,
         criterion: float | None = None) -> list[AccuracyCase]:
    check_profile(profile)
    specs = chosen_specs("long-range", profile, device, seeds, findings, criterion)
    cases = task_cases(specs, "long-range", device, learned_variants(variants), profile)
    return filtered(cases, seq_lens, dtypes)


def run_case(case: TaskCase, context: RunContext) -> dict:
    compiling.allow_recompiles(case.device)
    return run_task(case, context)


__all__ = ["TIMEOUT_S", "OPTIONS", "Case", "plan", "run_case", "summarize", "estimate", "case_cost",
           "needs", "recipes"]
