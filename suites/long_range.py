"""Long-range suite: the learned tasks swept over sequence length, accuracy against N per variant.

MQAR and selective copying are trained and tested at each length; passkey retrieval is trained at one
length and tested at every (length, depth) up to 32k tokens on a GPU; ListOps runs at LRA's 2K. Induction
heads' length extrapolation (train 256, test 64 .. 16384) is in the accuracy suite, whose rows the report
plots beside these. Cases, models, training and rows are the accuracy suite's (suites.accuracy).
Pathfinder is not implemented.
"""

from __future__ import annotations

from harness import compiling
from suites.accuracy import (
    AccuracyCase,
    TaskCase,
    TaskSpec,
    case_cost,
    check_profile,
    estimated_seconds,
    filtered,
    learned_variants,
    run_task,
    summarize,
    task_cases,
)

TIMEOUT_S = 900.0
Case = TaskCase

QUICK = [
    TaskSpec("mqar", (16, 32), (32,), (3e-3,), 64, 300, 1.0, kv_pairs=(2, 4), task_params={"vocab": 64},
             n_heads=4),
    TaskSpec("selective_copy", (32, 128), (32,), (3e-3,), 32, 300, 1.0, task_params={"n_memorize": 4},
             n_heads=4),
    TaskSpec("passkey", (32,), (32,), (3e-3,), 32, 300, 1.0, eval_lens=(32, 128), depths=(0.0, 1.0),
             task_params={"key_len": 2}, n_test=64, n_heads=4),
    TaskSpec("listops", (128,), (32,), (3e-3,), 32, 300, 1.0, task_params={"min_length": 32},
             train_pool=512, n_test=128, n_heads=4),
]
STANDARD = [
    TaskSpec("mqar", (256, 1024, 4096), (128,), (1e-3, 3e-3), 32768, 5000, 2.0, kv_pairs=(16, 64, 256),
             batch_tokens=True),
    TaskSpec("selective_copy", (256, 4096), (64,), (1e-3, 3e-3), 65536, 5000, 3.0, batch_tokens=True),
    TaskSpec("passkey", (2048,), (64,), (1e-3, 3e-3), 65536, 5000, 3.0, eval_lens=(2048, 8192, 32768),
             depths=(0.0, 0.25, 0.5, 0.75, 1.0), n_test=32, batch_tokens=True),
    TaskSpec("listops", (2000,), (64,), (1e-3, 3e-3), 64000, 5000, 5.0, task_params={"min_length": 500},
             train_pool=4096, batch_tokens=True),
]
FULL = [
    TaskSpec("mqar", (256, 512, 1024, 2048, 4096), (128, 256), (3e-4, 1e-3, 3e-3), 65536, 20000, 120.0,
             kv_pairs=(16, 32, 64, 128, 256), batch_tokens=True),
    TaskSpec("selective_copy", (256, 1024, 4096, 16384), (64,), (3e-4, 1e-3, 3e-3), 131072, 20000, 600.0,
             batch_tokens=True),
    TaskSpec("passkey", (4096,), (64,), (3e-4, 1e-3, 3e-3), 131072, 20000, 600.0,
             eval_lens=(1024, 2048, 4096, 8192, 16384, 32768, 65536),
             depths=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), n_test=128, batch_tokens=True),
    TaskSpec("listops", (2000,), (128,), (3e-4, 1e-3, 3e-3), 64000, 50000, 1200.0,
             task_params={"min_length": 500}, train_pool=96000, n_test=2000, n_layers=4, batch_tokens=True),
]
PROFILES = {"quick": QUICK, "standard": STANDARD, "full": FULL}


def plan(profile: str, device: str, variants: list[str] | None = None, seq_lens: list[int] | None = None,
         dtypes: list[str] | None = None) -> list[AccuracyCase]:
    check_profile(profile)
    cases = task_cases(PROFILES[profile], "long-range", device, learned_variants(profile, variants), profile)
    return filtered(cases, seq_lens, dtypes)


def run_case(case: TaskCase) -> dict:
    compiling.allow_recompiles(case.device)
    return run_task(case)


__all__ = ["TIMEOUT_S", "Case", "plan", "run_case", "summarize", "estimated_seconds", "case_cost"]
