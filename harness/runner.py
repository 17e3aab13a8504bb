"""Runs a suite's cases into a results store, one row per case, whatever happens to the case.

Cases run in a worker process so that a hang can be stopped by a per-case timeout and a crash (or a
corrupted CUDA context) costs one case, not the run. Failures are data: unsupported, out of memory,
timeout, non-finite output and errors each become a row with a status and a one-line reason.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness import env, registry
from harness.config import Case
from harness.registry import Unsupported
from harness.store import RunStore

STARTUP_TIMEOUT_S = 300.0


class NonFinite(Exception):
    """A case produced NaN or Inf."""


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Raise NonFinite when an output holds NaN or Inf: a recorded failure, not a number."""
    for t in tensors:
        if not torch.isfinite(t).all():
            raise NonFinite(f"{name} produced NaN or Inf")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def is_oom(exc: BaseException) -> bool:
    # MemoryError: a CPU allocation refused under a memory cap (RLIMIT_AS) is the CPU's OOM.
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def execute(suite_module: str, case: Case) -> tuple[str, str, dict[str, Any]]:
    """Run one case in this process and classify the outcome as (status, reason, metrics)."""
    v = registry.get(case.variant)
    head_dim = getattr(case, "head_dim", 64)
    causal = getattr(case, "causal", True)
    ok, reason = v.supports(case.device, case.dtype, head_dim, causal)
    if not ok:
        return "unsupported", reason, {}
    suite = importlib.import_module(suite_module)
    try:
        return "ok", "", suite.run_case(case)
    except Unsupported as e:
        return "unsupported", str(e), {}
    except NonFinite as e:
        return "nonfinite", str(e), {}
    except Exception as e:
        if is_oom(e):
            return "oom", one_line(e), {}
        where = traceback.extract_tb(e.__traceback__)[-1]
        return "error", f"{one_line(e)} (at {Path(where.filename).name}:{where.lineno})", {}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _serve(conn, suite_module: str) -> None:
    importlib.import_module(suite_module)
    conn.send("ready")  # start-up (imports) is not charged to the first case's timeout
    while True:
        case = conn.recv()
        if case is None:
            return
        conn.send(execute(suite_module, case))


class Worker:
    """A child process that runs cases; replaced after a timeout or a crash."""

    def __init__(self, suite_module: str):
        self.suite_module = suite_module
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.suite_module), daemon=True)
        self.proc.start()
        child.close()
        try:
            ready = self.conn.poll(STARTUP_TIMEOUT_S) and self.conn.recv() == "ready"
        except (EOFError, ConnectionError):
            ready = False
        if not ready:
            self.close(kill=True)
            raise RuntimeError(f"the worker process for {self.suite_module} failed to start "
                               f"(exit code {self.proc.exitcode}); see the error above")

    def run(self, case: Case, timeout_s: float) -> tuple[str, str, dict[str, Any]]:
        self.conn.send(case)
        if not self.conn.poll(timeout_s):
            self.restart()
            return "timeout", f"no result within the per-case timeout of {timeout_s:g} s", {}
        try:
            return self.conn.recv()
        except (EOFError, ConnectionError):
            code = self.proc.exitcode
            self.restart()
            return "error", f"worker process died (exit code {code})", {}

    def restart(self) -> None:
        self.close(kill=True)
        self._start()

    def close(self, kill: bool = False) -> None:
        if not kill and self.proc.is_alive():
            try:
                self.conn.send(None)
                self.proc.join(timeout=10)
            except (BrokenPipeError, OSError):
                pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


@dataclass
class RunSummary:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped_as_done: int = 0
    interrupted: bool = False

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1


def run(
    cases: list[Case],
    suite_module: str,
    out: str | Path,
    timeout_s: float = 300.0,
    progress: bool = True,
) -> RunSummary:
    """Run every case not already in `out`, writing each row as soon as its case finishes."""
    store = RunStore(out)
    device = cases[0].device if cases else "cpu"
    environment = env.describe(device)
    store.open(environment)
    done = store.finished()
    summary = RunSummary(out=Path(out))
    todo = [c for c in cases if c.case_id not in done]
    summary.skipped_as_done = len(cases) - len(todo)
    oom_at: dict[Any, int] = {}  # OOM group -> smallest size that ran out of memory
    row_env = env.row_fields(environment)
    os.environ["ATTNBENCH_RUN_DIR"] = str(Path(out).resolve())  # suites cache per-run figures there
    worker = Worker(suite_module) if todo else None
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task(cases[0].suite if cases else "nothing to do", total=len(todo))
            for case in todo:
                bar.update(task, description=f"{case.suite}: {case.describe()}")
                started = env.now()
                group, size = case.oom_key() if hasattr(case, "oom_key") else (None, None)
                if group is not None and group in oom_at and size > oom_at[group]:
                    reason = f"larger than {oom_at[group]}, which ran out of memory"
                    status, metrics = "skipped", {}
                else:
                    status, reason, metrics = worker.run(case, timeout_s)
                if status == "oom" and group is not None:
                    oom_at[group] = min(size, oom_at.get(group, size))
                store.write({
                    "case_id": case.case_id, **case.flat(), "status": status, "reason": reason,
                    **metrics, **row_env, "started_at": started, "finished_at": env.now(),
                })
                summary.add(status)
                bar.advance(task)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if worker is not None:
            worker.close(kill=summary.interrupted)
    return summary
