"""The context a case runs in: what a suite's `run_case(case, context)` (harness.suite) may know of its run.

The runner makes one per run; each worker process gets its own copy, whose cache lasts as long as the
process. A Ray node gets one without the run directory (`handing`), carrying the rows its cases need.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.store import RunStore


@dataclass
class RunContext:
    """What a case may know of its run, passed to `run_case` by the runner (one per worker process).

    `run_dir`: the run directory, where a suite may keep per-run files (a measured matmul peak); None
    where the case runs on a machine that does not hold it (a Ray node: nodes share no filesystem).
    `rows(case_ids)`: the recorded rows of those cases. A context without a run directory answers from
    the rows it was handed (the rows its cases `need` that the run held when it was sent, `handing`) and
    the rows of the cases run in this process since (`record`); one with a run directory reads them there.
    `cache`: a dict kept for the life of the worker process (a trained model its next cases evaluate); it
    never travels with the context. `run_id` tells the runs apart where one process serves several.
    """

    run_dir: Path | None = None
    run_id: str = ""
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def rows(self, case_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """case_id -> row of those of `case_ids` that have one."""
        ids = list(dict.fromkeys(case_ids))
        found = {i: self.known[i] for i in ids if i in self.known}
        rest = [i for i in ids if i not in found]
        if rest and self.run_dir is not None:
            found |= RunStore(self.run_dir).rows(rest)
        return found

    def record(self, case, status: str, reason: str, metrics: dict[str, Any]) -> None:
        """The outcome of a case this process ran, kept as its row where no run directory will hold it
        (its config, status, reason and metrics: the columns a case reads, without the machine's)."""
        if self.run_dir is None:
            self.known[case.case_id] = {"case_id": case.case_id, **case.flat(), "status": status,
                                        "reason": reason, **metrics}

    def handing(self, case_ids: Iterable[str]) -> RunContext:
        """A context for a machine without the run directory: the rows of `case_ids` recorded so far."""
        return RunContext(None, self.run_id, self.rows(case_ids))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "cache": {}}  # a model or figure of this process stays here
