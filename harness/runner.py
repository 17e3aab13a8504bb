"""Runs a suite's cases into a results store, one row per case, whatever happens to the case.

Cases run in a worker process so that a hang can be stopped by a per-case timeout and a crash (or a
corrupted CUDA context) costs one case, not the run. Failures are data: unsupported, out of memory,
timeout, non-finite output and errors each become a row with a status and a one-line reason.

One case is `execute(suite_module, case, context) -> (status, reason, metrics)` (in any process: the
module's `run_case(case, context)`, harness.suite, with the run's harness.context.RunContext) and
`case_row(...)` (the row it leaves); `cases_to_run` and `OomSkips` decide what runs. `run` is the local
loop that schedules them through a `Worker`; another executor can reuse the same pieces. Before the
first case, `run` records the suite's experiment recipes in the run's environment.json
(`record_recipes`).
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import multiprocessing as mp
import secrets
import signal
import traceback
from collections.abc import Iterator
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
from harness.context import RunContext
from harness.errors import one_line
from harness.registry import Unsupported
from harness.store import STATUSES, Compaction, RunStore
from harness.suite import load_suite

STARTUP_TIMEOUT_S = 300.0


class NonFinite(Exception):
    """A case produced NaN or Inf."""


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Raise NonFinite when an output holds NaN or Inf: a recorded failure, not a number."""
    for t in tensors:
        if not torch.isfinite(t).all():
            raise NonFinite(f"{name} produced NaN or Inf")


OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, and the CPU's: MemoryError (an allocation refused under RLIMIT_AS),
    ENOMEM, and torch's "DefaultCPUAllocator: can't allocate memory" RuntimeError."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    text = str(exc).lower()
    return any(m in text for m in OOM_MESSAGES)


def execute(suite_module: str, case: Case, context: RunContext) -> tuple[str, str, dict[str, Any]]:
    """Run one case in this process and classify the outcome as (status, reason, metrics); the context
    keeps its row where no run directory will (`RunContext.record`)."""
    status, reason, metrics = _outcome(suite_module, case, context)
    context.record(case, status, reason, metrics)
    return status, reason, metrics


def _outcome(suite_module: str, case: Case, context: RunContext) -> tuple[str, str, dict[str, Any]]:
    v = registry.get(case.variant)
    head_dim = getattr(case, "head_dim", 64)
    causal = getattr(case, "causal", True)
    ok, reason = v.supports(case.device, case.dtype, head_dim, causal)
    if not ok:
        return "unsupported", reason, {}
    # The module's run_case alone: a suite (checked whole by `run`, in the driver), or a module that
    # serves one search's probes (suites.frontier).
    run_case = importlib.import_module(suite_module).run_case
    try:
        return "ok", "", run_case(case, context)
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


def _serve(conn, suite_module: str, context: RunContext) -> None:
    # Ctrl-C reaches the whole process group: the parent decides what happens to the case in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        importlib.import_module(suite_module)
    except BaseException as e:  # reported by the parent: one line, and the traceback in its log
        conn.send(("failed", f"{one_line(e)}\n{traceback.format_exc()}"))
        return
    conn.send(("ready", ""))  # start-up (imports) is not charged to the first case's timeout
    try:
        while (case := conn.recv()) is not None:
            conn.send(execute(suite_module, case, context))
    except (EOFError, OSError):  # the parent is gone: nothing to report to
        return


class WorkerStartError(RuntimeError):
    """The worker process could not start (its suite failed to import); the message holds the child's
    traceback after its first line."""


class Worker:
    """A child process that runs cases; replaced after a timeout or a crash. Each process gets its own
    copy of `context` (its cache starts empty: a new process has no model in memory)."""

    def __init__(self, suite_module: str, context: RunContext):
        self.suite_module = suite_module
        self.context = context
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.suite_module, self.context), daemon=True)
        self.proc.start()
        child.close()
        try:
            state, detail = self.conn.recv() if self.conn.poll(STARTUP_TIMEOUT_S) else ("silent", "")
        except (EOFError, OSError):
            state, detail = "died", ""
        if state != "ready":
            self.close(kill=True)
            why = detail or f"no answer (exit code {self.proc.exitcode})"
            raise WorkerStartError(f"the worker process for {self.suite_module} failed to start: {why}")

    def run(self, case: Case, timeout_s: float) -> tuple[str, str, dict[str, Any]]:
        if not self.proc.is_alive():  # killed between cases: the next case gets a new worker
            self.restart()
        try:
            self.conn.send(case)
            if not self.conn.poll(timeout_s):
                self.restart()
                return "timeout", f"no result within the per-case timeout of {timeout_s:g} s", {}
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(timeout=5)
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
            except OSError:
                pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


# --- what to run, and the row a case leaves -----------------------------------------------------------

# --retry: which statuses already on disk are measured again. `failed`: the harness could not measure the
# case (an exception, a hang, a worker that died: all `error` or `timeout`). unsupported, oom and skipped
# are answers about the variant, and so is nonfinite (its output held NaN/Inf): kept unless `all`.
RETRY = {"failed": ("error", "timeout"), "none": (), "all": STATUSES}


def unique(cases: list[Case]) -> list[Case]:
    """The cases in order, each configuration once (the same case twice would be measured twice and
    counted twice, but written once)."""
    first: dict[str, Case] = {}
    for case in cases:
        first.setdefault(case.case_id, case)
    return list(first.values())


def cases_to_run(cases: list[Case], recorded: dict[str, str], retry: str = "failed") -> list[Case]:
    """Cases with no record yet, and those whose recorded status `retry` measures again."""
    if retry not in RETRY:
        raise ValueError(f"unknown retry policy {retry!r}; use {', '.join(RETRY)}")
    return [c for c in cases if recorded.get(c.case_id, "missing") in (*RETRY[retry], "missing")]


class OomSkips:
    """After a case of an OOM group runs out of memory, its larger sizes are `skipped`, not run. A case may
    also rule itself out from the cases of its group run before it in this session: its
    `skip_reason(history)`, history = [(case, status, metrics)] (the throughput suite's time cap)."""

    def __init__(self, cases: list[Case], recorded: dict[str, str]):
        self.smallest: dict[Any, int] = {}  # OOM group -> smallest size that ran out of memory
        self.history: dict[Any, list[tuple[Case, str, dict[str, Any]]]] = {}  # group -> cases run
        for case in cases:  # OOMs of an earlier session of this run count too
            if recorded.get(case.case_id) == "oom":
                self.record(case, "oom")

    @staticmethod
    def key(case: Case):
        return case.oom_key() if hasattr(case, "oom_key") else (None, None)

    def reason(self, case: Case) -> str | None:
        group, size = self.key(case)
        if group is not None and group in self.smallest and size > self.smallest[group]:
            return f"larger than {self.smallest[group]}, which ran out of memory"
        own = getattr(case, "skip_reason", None)
        return own(self.history.get(group, [])) if own is not None and group is not None else None

    def record(self, case: Case, status: str, metrics: dict[str, Any] | None = None) -> None:
        group, size = self.key(case)
        if status == "oom" and group is not None:
            self.smallest[group] = min(size, self.smallest.get(group, size))
        if metrics is not None and group is not None:
            self.history.setdefault(group, []).append((case, status, metrics))


def variant_facts(name: str) -> dict[str, Any]:
    """Registry facts a row carries besides Case.flat()'s: whether the variant is the reference the others
    are compared with, and which planners' models it leaves to harness.costs' defaults."""
    v = registry.get(name)
    return {"baseline": v.baseline, "default_models": ", ".join(v.default_models)}


def case_row(case: Case, status: str, reason: str, metrics: dict[str, Any], environment: dict[str, Any],
             started: str, finished: str, run_fields: dict[str, Any] | None = None,
             where: dict[str, Any] | None = None) -> dict[str, Any]:
    """The store row of one case: its whole config, outcome, metrics and environment (`where`: the machine
    it ran on when that is not this one, a Ray node)."""
    return {"case_id": case.case_id, **case.flat(), **variant_facts(case.variant), **(run_fields or {}),
            "status": status, "reason": reason, **metrics, **env.row_fields(environment), **(where or {}),
            "started_at": started, "finished_at": finished}


# --- executors: where cases run. Both walk their cases with `walk` and report these events; the runner
# --- alone writes rows, wherever the cases ran.

@dataclass
class Started:
    case: Case
    at: str  # UTC ISO-8601, on the machine that runs it
    where: dict[str, Any] = field(default_factory=dict)  # row columns naming that machine (Ray: its node)


@dataclass
class Finished:
    case: Case
    status: str
    reason: str
    metrics: dict[str, Any]
    started_at: str
    finished_at: str
    where: dict[str, Any] = field(default_factory=dict)


def walk(cases: list[Case], skips: OomSkips, run_one) -> Iterator[Started | Finished]:
    """The cases in order: a case larger than a size of its OOM group that ran out of memory (or one its
    own rule rules out, OomSkips) is `skipped`, every other one is run by `run_one(case) -> (status,
    reason, metrics)`."""
    for case in cases:
        started = env.now()
        yield Started(case, started)
        why = skips.reason(case)
        status, reason, metrics = ("skipped", why, {}) if why is not None else run_one(case)
        skips.record(case, status, metrics)
        yield Finished(case, status, reason, metrics, started, env.now())


class LocalExecutor:
    """The default: one worker process on this machine runs the cases one after another, in plan order."""

    name = "local"

    def gpus(self) -> float:
        return float(torch.cuda.device_count())

    def environment(self) -> dict[str, Any]:
        return {"executor": self.name}

    def events(self, cases: list[Case], suite_module: str, timeout_s: float, skips: OomSkips,
               context: RunContext) -> Iterator[Started | Finished]:
        worker = Worker(suite_module, context)
        finished = False
        try:
            yield from walk(cases, skips, lambda case: worker.run(case, timeout_s))
            finished = True
        finally:
            worker.close(kill=not finished)  # interrupted: the case in flight is abandoned

    def close(self) -> None:
        pass


@dataclass
class RunSummary:
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped_as_done: int = 0  # recorded already and kept
    retried: int = 0  # recorded already and measured again (--retry)
    interrupted: bool = False
    compaction: Compaction | None = None  # what compacting the finished run did

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1


def run(
    cases: list[Case],
    suite_module: str,
    out: str | Path,
    timeout_s: float = 300.0,
    progress: bool = True,
    retry: str = "failed",
    fresh: bool = False,
    run_fields: dict[str, Any] | None = None,
    executor=None,
) -> RunSummary:
    """Run the cases of `out` not recorded yet (and those `retry` measures again) on `executor` (default:
    a LocalExecutor), writing each row as soon as its case finishes, and compact the run once every case
    has run (not when interrupted: `RunStore.compact`). `fresh` clears the run directory first. The
    directory is locked for the whole run (a RunDirError when another process holds it). `run_fields` go
    into every row (the profile the cases came from). The suite's cases get a RunContext of this run
    (harness.context)."""
    executor = executor or LocalExecutor()
    cases = unique(cases)
    store = RunStore(out)
    summary = RunSummary(out=Path(out))
    context = RunContext(Path(out).resolve(), run_id=secrets.token_hex(8))
    try:
        with store.lock():
            if fresh:
                store.clear()
            environment = {**env.describe(cases[0].device if cases else "cpu"), **executor.environment()}
            suite = load_suite(suite_module)
            store.open(environment, machine_bound=suite.machine_bound)
            recorded = store.statuses()
            record_recipes(store, suite.recipes(cases), has_rows=bool(recorded))
            todo = cases_to_run(cases, recorded, retry)
            summary.skipped_as_done = len(cases) - len(todo)
            summary.retried = sum(c.case_id in recorded for c in todo)
            again = {c.case_id for c in todo}
            skips = OomSkips([c for c in cases if c.case_id not in again], recorded)  # OOMs that stand
            events = executor.events(todo, suite_module, timeout_s, skips, context) if todo else iter(())
            _drive(events, store, environment, run_fields, summary, progress, len(todo),
                   cases[0].suite if cases else None)
            if not summary.interrupted:  # finished: one file per suite (Ctrl-C keeps the case files)
                summary.compaction = store.compact()
    finally:
        executor.close()
    return summary


def recipe_entry(recipe: dict[str, Any]) -> dict[str, Any]:
    """{"recipe": the recipe as JSON reads it back, "hash": sha1 of its JSON with sorted keys}."""
    text = json.dumps(recipe, sort_keys=True)
    return {"recipe": json.loads(text), "hash": hashlib.sha1(text.encode()).hexdigest()}


def record_recipes(store: RunStore, recipes: dict[str, dict[str, Any]], has_rows: bool) -> None:
    """The suite's experiment recipes in the run's environment.json, under `recipes` (name -> entry,
    `recipe_entry`). A name recorded before with another hash is replaced while the run has no rows; once
    it has rows the first recipe stays, and a recipe that differs from the one in force (the last change,
    else the first) is appended to `recipe_changes[name]` as {"hash", "recipe", "at"}."""
    environment = store.environment()
    recorded = dict(environment.get("recipes") or {})
    changes = {name: list(entries) for name, entries in (environment.get("recipe_changes") or {}).items()}
    for name, recipe in recipes.items():
        entry = recipe_entry(recipe)
        if name not in recorded or not has_rows:
            recorded[name] = entry
            changes.pop(name, None)  # no row was made by an earlier recipe
        elif entry["hash"] != (changes.get(name) or [recorded[name]])[-1]["hash"]:
            changes.setdefault(name, []).append({**entry, "at": env.now()})
    update = {"recipes": recorded, "recipe_changes": changes}
    if any(environment.get(k, {}) != v for k, v in update.items()):
        store.update_environment(**{k: v for k, v in update.items() if v or k in environment})


def _drive(events, store: RunStore, environment, run_fields, summary: RunSummary, progress: bool, total: int,
           suite: str | None) -> None:
    """The one loop of every executor: each Finished event is a row written now; the bar counts them."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn()]
    running: dict[str, Case] = {}
    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task(suite or "nothing to do", total=total)
            for event in events:
                if isinstance(event, Started):
                    running[event.case.case_id] = event.case
                else:
                    running.pop(event.case.case_id, None)
                    store.write(case_row(event.case, event.status, event.reason, event.metrics, environment,
                                         event.started_at, event.finished_at, run_fields, event.where))
                    summary.add(event.status)
                    bar.advance(task)
                if running:
                    latest = next(reversed(running.values()))
                    more = f" (+{len(running) - 1} running)" if len(running) > 1 else ""
                    bar.update(task, description=f"{latest.suite}: {latest.describe()}{more}")
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if hasattr(events, "close"):
            events.close()  # an interrupted executor stops what is in flight
