"""`attnbench run --executor ray`: a sweep's cases as Ray tasks on a cluster; every row comes back here.

A chain (the cases of one OOM group in plan order: a length sweep, a trained model and its evaluations)
is one Ray task that walks its cases as the local executor does (`runner.walk`) and streams an event as
each case starts and ends (a Ray generator). So:

- the driver alone writes the store (no shared filesystem), and resume works as it does locally: only
  the cases without a row are sent;
- a chain runs in one worker process, in order: "larger than the N that ran out of memory" and a model
  shared by its evaluations hold as they do locally;
- a task asks for a whole GPU on CUDA (num_gpus=1: a timed case never shares its GPU) and one CPU (one
  torch thread) on CPU;
- the per-case timeout runs from the case's start: `ray.wait` with a deadline, then `ray.cancel(force=
  True)`, which kills the worker process (Ray starts a new one); a `timeout` row, and the rest of the
  chain is sent again;
- a lost node or worker process: the rest of the chain is sent again, up to `max_retries` more times for
  the case in flight (the row's `attempts`); a case lost on every try is an `error` row naming the loss.
  Ray's own task retry would replay a generator from its first case (re-running finished cases while
  the per-case clock runs), so these retries are counted here;
- every row names the node it ran on: hostname, device name, driver, and Ray's node id;
- a node holds no run directory: a chain's task carries a RunContext without one, handed the rows its
  cases `need` (harness.suite) that the driver's run holds when the chain is sent (again, after a timeout
  or a loss), and it keeps the rows of the cases it runs for the cases after them. The context's cache
  lasts as long as the Ray worker process, for one run (`worker_cache`).
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from harness import env, runner, shard
from harness.config import Case
from harness.context import RunContext
from harness.runner import Finished, OomSkips, Started
from harness.suite import load_suite

MAX_RETRIES = 2  # further tries of a case whose node or worker process was lost
CONNECT_TIMEOUT_S = 5.0
POLL_S = 1.0  # the longest wait for an event, so that Ctrl-C is answered
LOSSES = {"NodeDiedError": "node lost", "WorkerCrashedError": "worker process died",
          "OwnerDiedError": "owner died", "ObjectLostError": "result lost"}


def require_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'attnbench[cluster]'") from None
    return ray


def check_address(address: str) -> None:
    """'auto' or HOST:PORT where something answers, so that a wrong address fails in seconds."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address takes auto or HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ValueError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the "
                         f"head with `ray start --head --port {port}` or pass its address") from None


@functools.cache
def node_facts(device: str) -> dict[str, Any]:
    """The row columns of the machine this Ray worker runs on (once per worker process)."""
    import ray

    return {**env.row_fields(env.describe(device)), "node_id": ray.get_runtime_context().get_node_id()}


@functools.lru_cache(maxsize=1)
def worker_cache(run_id: str) -> dict[Any, Any]:
    """The cache of this Ray worker process for one run: kept across the chains it runs, as a local
    worker keeps it across cases (a new run drops the last one's)."""
    return {}


def run_chain(suite_module: str, cases: list[Case], skips: OomSkips,
              context: RunContext) -> Iterator[Started | Finished]:
    """The body of a chain's Ray task, on a node: the cases walked as locally, each event naming the node."""
    import torch

    if cases[0].device == "cpu":
        torch.set_num_threads(1)  # the one CPU the task asked for
    context.cache = worker_cache(context.run_id)
    where = node_facts(cases[0].device)
    for event in runner.walk(cases, skips, lambda case: runner.execute(suite_module, case, context)):
        yield replace(event, where=where)


@functools.cache
def remote_chain(device: str):
    """The Ray task of a chain. Resources are declared here, not in .options(): with num_gpus in the
    decorator each task gets a fresh worker process (Ray's max_calls=1 for GPU tasks), so a process
    never sees a GPU other than the one assigned to it."""
    ray = require_ray()
    resources = {"num_gpus": 1, "num_cpus": 1} if device == "cuda" else {"num_cpus": 1}
    return ray.remote(max_retries=0, **resources)(run_chain)


@dataclass
class Chain:
    cases: list[Case]  # not finished yet, the one in flight first
    skips: OomSkips  # the OOMs of the chain's group that the driver has seen
    attempt: int = 1  # of the case in flight
    started: Started | None = None  # the case in flight, once the node said so
    deadline: float | None = None


class RayExecutor:
    """Cases as Ray tasks on the cluster at `address` ('auto': the one running on this machine)."""

    name = "ray"

    def __init__(self, address: str = "auto", max_retries: int = MAX_RETRIES):
        self.ray = require_ray()
        check_address(address)
        self.address = address
        self.max_retries = max_retries
        self.connected_here = not self.ray.is_initialized()
        if self.connected_here:
            try:
                self.ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            except Exception as e:  # no cluster at 'auto', another Ray version, ...
                message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"--ray-address {address}: {message}") from None

    def gpus(self) -> float:
        return self.ray.cluster_resources().get("GPU", 0.0)

    def environment(self) -> dict[str, Any]:
        nodes = [{"node_id": n["NodeID"], "address": n["NodeManagerAddress"],
                  "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0)}
                 for n in self.ray.nodes() if n["Alive"]]
        return {"executor": self.name, "device_name": "Ray cluster (rows name their nodes)", "driver": None,
                "ray_version": self.ray.__version__, "ray_address": self.address, "ray_nodes": nodes}

    def close(self) -> None:
        if self.connected_here and self.ray.is_initialized():
            self.ray.shutdown()

    # --- the scheduling loop on the driver -----------------------------------------------------------

    def events(self, cases: list[Case], suite_module: str, timeout_s: float, skips: OomSkips,
               context: RunContext) -> Iterator[Started | Finished]:
        groups: dict[str, list[Case]] = {}
        for case in cases:
            groups.setdefault(shard.group_of(case), []).append(case)
        task = remote_chain(cases[0].device)
        needs = load_suite(suite_module).needs
        self.timeout_s = timeout_s
        pending: dict[Any, Chain] = {}

        def submit(chain: Chain) -> None:
            chain.started = chain.deadline = None
            needed = [case_id for case in chain.cases for case_id in needs(case)]
            pending[task.remote(suite_module, chain.cases, chain.skips, context.handing(needed))] = chain

        for members in groups.values():
            submit(Chain(members, skips))
        try:
            while pending:
                deadlines = [c.deadline for c in pending.values() if c.deadline is not None]
                wait = min([POLL_S, *(d - time.monotonic() for d in deadlines)])
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=max(0.0, wait))
                if ready:  # every generator with an event now, not only the first in line
                    ready, _ = self.ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for generator in ready:
                    yield from self._next_event(generator, pending, submit)
                now = time.monotonic()
                for generator, chain in list(pending.items()):
                    if chain.deadline is not None and now > chain.deadline:
                        self.ray.cancel(generator, force=True)  # kills the worker process
                        del pending[generator]
                        yield self._end(chain, "timeout",
                                        f"no result within the per-case timeout of {timeout_s:g} s")
                        if chain.cases:
                            submit(chain)
        finally:
            for generator in pending:  # interrupted: nothing keeps running on the cluster
                self.ray.cancel(generator, force=True)

    def _next_event(self, generator, pending: dict[Any, Chain], submit) -> Iterator[Started | Finished]:
        chain = pending[generator]
        try:
            event = self.ray.get(next(generator))
        except StopIteration:
            del pending[generator]
            return
        except self.ray.exceptions.RayTaskError as e:  # the chain task raised: the harness, not the case
            del pending[generator]
            yield self._end(chain, "error", f"chain task failed: {runner.one_line(e.cause or e)}")
            if chain.cases:
                submit(chain)
            return
        except self.ray.exceptions.RayError as e:  # a lost node or worker process: try again
            del pending[generator]
            loss = LOSSES.get(type(e).__name__, "lost")
            if chain.attempt > self.max_retries:
                yield self._end(chain, "error", f"{loss} on each of {chain.attempt} attempts "
                                                f"({runner.one_line(e)})")
            else:
                chain.attempt += 1
            if chain.cases:
                submit(chain)
            return
        if isinstance(event, Started):
            chain.started, chain.deadline = event, time.monotonic() + self.timeout_s
            yield event
        else:
            chain.cases.pop(0)
            chain.skips.record(event.case, event.status)
            yield replace(event, where={**event.where, "attempts": chain.attempt})
            chain.attempt, chain.started, chain.deadline = 1, None, None

    def _end(self, chain: Chain, status: str, reason: str) -> Finished:
        """The case in flight of a chain that stopped: its row, and the chain moves on."""
        case = chain.cases.pop(0)
        started = chain.started
        chain.skips.record(case, status)
        finished = Finished(case, status, reason, {}, started.at if started else env.now(), env.now(),
                            {**(started.where if started else {}), "attempts": chain.attempt})
        chain.attempt, chain.started, chain.deadline = 1, None, None
        return finished
