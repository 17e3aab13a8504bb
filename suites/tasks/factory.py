"""Every task by name: the one place that maps a task's name and options to its generator (the generators
import the shared pieces of suites.tasks, so the map lives apart from them)."""

from suites.tasks import Task
from suites.tasks.induction import Induction
from suites.tasks.listops import ListOps
from suites.tasks.mqar import MQAR
from suites.tasks.passkey import Passkey
from suites.tasks.selective_copy import SelectiveCopy

TASK_NAMES = ("mqar", "selective_copy", "induction", "passkey", "listops")


def make_task(name: str, seq_len: int, kv_pairs: int | None, depth: float | None, options: dict) -> Task:
    """A task by name at seq_len; kv_pairs is MQAR's (and only MQAR's), depth passkey's, options the
    generator's others (vocab, n_memorize, ...)."""
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
    if (kv_pairs is None) == (name == "mqar"):
        raise ValueError("kv_pairs is an MQAR option, which MQAR needs")
    if depth is not None and name != "passkey":
        raise ValueError(f"depth is a passkey option, not one of {name}")
    if name == "mqar":
        return MQAR(seq_len=seq_len, kv_pairs=kv_pairs, **options)
    if name == "passkey":
        return Passkey(seq_len=seq_len, depth=depth, **options)
    factories = {"selective_copy": SelectiveCopy, "induction": Induction, "listops": ListOps}
    return factories[name](seq_len=seq_len, **options)
