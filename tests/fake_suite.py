"""A suite whose cases do what they are told: the runner's failure handling is tested with it.

Like the throughput suite's peak_matmul.json, it keeps a per-run cache file (fake_cache.json) in the
run directory of its context, so that corrupting every kind of file a run holds can be tested. Its
`recipes` are $ATTNBENCH_FAKE_RECIPE (JSON) when set, and a case of action `read_rows` reports the rows
its context finds for the cases it `needs` (`params["needs"]`: case ids).
"""

import json
import os
import signal
import time
from pathlib import Path

import torch

from harness import store
from harness.config import Case as BaseCase
from harness.context import RunContext
from harness.runner import check_finite

TIMEOUT_S = 5.0
OPTIONS = ()
CACHE_FILE = "fake_cache.json"


class Case(BaseCase):
    suite: str = "fake"
    variant: str = "vanilla"
    device: str = "cpu"
    action: str = "ok"
    seq_len: int = 8

    def oom_key(self):
        return (self.variant, self.action), self.seq_len

    def describe(self):
        return f"{self.action} N={self.seq_len}"


def plan(profile, device, variants=None, seq_lens=None, dtypes=None):
    """For the command line: every case does $ATTNBENCH_FAKE_ACTION (die_once: $ATTNBENCH_FAKE_MARKER)."""
    action = os.environ.get("ATTNBENCH_FAKE_ACTION", "ok")
    params = {"marker": os.environ["ATTNBENCH_FAKE_MARKER"]} if action == "die_once" else {}
    return [Case(action=action, seq_len=n, params=params) for n in (seq_lens or [8, 16])]


def case_cost(case: Case) -> float:
    return 1.0


def recipes(cases: list[Case]) -> dict[str, dict]:
    return json.loads(os.environ.get("ATTNBENCH_FAKE_RECIPE", "{}"))


def needs(case: Case) -> list[str]:
    return list(case.params.get("needs", []))


def cached_figure(context: RunContext) -> float:
    """A figure measured once per run and cached in the run directory (a corrupt cache is measured again)."""
    if context.run_dir is None:
        return 1.0
    path = context.run_dir / CACHE_FILE
    cached = store.read_json_cache(path)
    if not isinstance(cached.get("figure"), float):
        cached["figure"] = 1.0
        store.write_json(path, cached)
    return cached["figure"]


def run_case(case: Case, context: RunContext) -> dict:
    if case.action == "hang" or (case.action == "hang_first" and case.seq_len == 8):
        time.sleep(3600)
    if case.action == "nan":
        check_finite("fake", torch.tensor([1.0, float("nan")]))
    if case.action == "oom" and case.seq_len >= 32:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if case.action == "cpu_oom" and case.seq_len >= 32:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate "
                           "memory)")
    if case.action == "error":
        raise RuntimeError("boom\nsecond line")
    if case.action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if case.action == "die_once":  # the worker dies the first time this case runs, then it is fine
        marker = Path(case.params["marker"])
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    if case.action == "slow":
        time.sleep(0.3)
    if case.action == "sleep":  # seq_len milliseconds
        time.sleep(case.seq_len / 1000)
    if case.action == "read_rows":  # the value of each needed row found, in the order asked for
        found = context.rows(needs(case))
        return {"value": float(case.seq_len) * 2,
                "found": [found[i]["value"] for i in needs(case) if i in found]}
    return {"value": float(case.seq_len) * 2, "curve": [1.0, 0.5], "figure": cached_figure(context)}
