"""The suite protocol: what a suite module declares, and how the harness reads it.

A suite is a module named by an `attnbench.suites` entry point (harness.plugins). It declares:

    TIMEOUT_S: float             the per-case timeout in seconds when --timeout is not given
    OPTIONS: tuple[str, ...]     the plan options it takes beyond the common ones, each a keyword of
                                 `plan` (the learned suites': "seeds", "findings", "criterion"); () if none
    plan(profile, device, variants=None, seq_lens=None, dtypes=None, **options) -> list[Case]
    run_case(case, context) -> dict   one case's metrics, called in a worker process; context: the
                                 harness.context.RunContext of its run
    case_cost(case) -> float     estimated seconds of one case (--shard balances its parts by it)

and may declare these capabilities; a suite that does not gets the default on the right:

    summarize(out_dir, console)            what a finished run's rows say     nothing is printed
    find_max_n(device, profile, out, ...)  the memory-frontier search         None: --find-max-n refused
    import_benchmark_json(path, out) -> int  pytest-benchmark JSON to rows    None: import-benchmark refused
    recipes(cases) -> {name: recipe}       each experiment's recipe (grid,    {}: nothing recorded
                                           budgets, seeds, criteria, learning
                                           rates), recorded in environment.json by the runner
    needs(case) -> [case_id]               the cases whose rows `run_case`    []: none
                                           reads through its context
    estimate(cases) -> Estimate            a plan's estimated seconds,        None: the sum of case_cost
                                           compiling included (harness.estimate;
                                           `attnbench run --estimate`)

and may declare `MACHINE_BOUND = False` (default True) when its rows do not depend on the machine that
measured them (accuracies and errors, not speeds): a run of it may then resume on another machine of the
same device kind (harness.store.RunStore.open).

`Suite.of(module)` checks the declared members and fills in the defaults (a module that lacks a member
is a SuiteError naming it, which harness.plugins reports as a plugin problem); the harness reads a suite
only through the `Suite` it returns.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

REQUIRED = ("plan", "run_case", "TIMEOUT_S", "case_cost", "OPTIONS")
CAPABILITIES = ("summarize", "find_max_n", "import_benchmark_json", "recipes", "needs", "estimate")
MAY_BE_NONE = ("find_max_n", "import_benchmark_json", "estimate")  # None: the suite does not offer it


class SuiteError(ValueError):
    """A suite module that does not declare what the protocol asks of it; the message says what."""


def _no_summary(out_dir, console) -> None:
    pass


def _no_recipes(cases) -> dict[str, dict]:
    return {}


def _needs_nothing(case) -> list[str]:
    return []


@dataclass(frozen=True)
class Suite:
    """A suite as the harness uses it: its module's declared members, defaults where it declares none."""

    module: str  # the import name a worker process imports to run its cases
    plan: Callable[..., list]
    run_case: Callable[..., dict[str, Any]]
    timeout_s: float
    case_cost: Callable[[Any], float]
    options: tuple[str, ...]
    summarize: Callable[[Any, Any], None] = _no_summary
    find_max_n: Callable[..., Any] | None = None
    import_benchmark_json: Callable[[Any, Any], int] | None = None
    recipes: Callable[[list], dict[str, dict]] = _no_recipes
    needs: Callable[[Any], list[str]] = _needs_nothing
    estimate: Callable[[list], Any] | None = None  # harness.estimate.of_suite fills in the default
    machine_bound: bool = True

    @classmethod
    def of(cls, module: ModuleType) -> Suite:
        """The suite a module declares; SuiteError naming every missing or malformed member."""
        declared = vars(module)
        missing = [name for name in REQUIRED if name not in declared]
        if missing:
            raise SuiteError(f"{module.__name__} lacks {', '.join(missing)} (a suite declares "
                             f"{', '.join(REQUIRED)}: see harness.suite)")
        timeout, options = declared["TIMEOUT_S"], declared["OPTIONS"]
        capabilities = {name: declared[name] for name in CAPABILITIES if name in declared}
        wrong = [name for name in ("plan", "run_case", "case_cost") if not callable(declared[name])]
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not timeout > 0:
            wrong.append("TIMEOUT_S (a positive number of seconds)")
        if not isinstance(options, (tuple, list)) or not all(isinstance(o, str) for o in options):
            wrong.append("OPTIONS (a tuple of plan keywords)")
        wrong += [name for name, member in capabilities.items()
                  if not callable(member) and not (member is None and name in MAY_BE_NONE)]
        machine_bound = declared.get("MACHINE_BOUND", True)
        if not isinstance(machine_bound, bool):
            wrong.append("MACHINE_BOUND (True or False)")
        if wrong:
            raise SuiteError(f"{module.__name__}: malformed {', '.join(wrong)} (see harness.suite)")
        return cls(module.__name__, declared["plan"], declared["run_case"], float(timeout),
                   declared["case_cost"], tuple(options), **capabilities, machine_bound=machine_bound)


def load_suite(module: str) -> Suite:
    """The suite a module declares, imported by name."""
    return Suite.of(importlib.import_module(module))
