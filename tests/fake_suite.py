"""A suite whose cases do what they are told: the runner's failure handling is tested with it."""

import os
import signal
import time

import torch

from harness.config import Case as BaseCase
from harness.runner import check_finite

TIMEOUT_S = 5.0


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
    return [Case(action="ok", seq_len=n) for n in (seq_lens or [8, 16])]


def run_case(case: Case) -> dict:
    if case.action == "hang":
        time.sleep(3600)
    if case.action == "nan":
        check_finite("fake", torch.tensor([1.0, float("nan")]))
    if case.action == "oom" and case.seq_len >= 32:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if case.action == "error":
        raise RuntimeError("boom\nsecond line")
    if case.action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if case.action == "slow":
        time.sleep(0.3)
    return {"value": float(case.seq_len) * 2, "curve": [1.0, 0.5]}
