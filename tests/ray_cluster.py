"""A real Ray cluster of two nodes on this machine, for the tests of `--executor ray`.

`ray start --head --port P --node-ip-address 127.0.0.1` on a free port, then `ray start --address
127.0.0.1:P` for a second node. Each `ray start --block` runs in a process group of its own, so stopping
the cluster ends exactly the processes it started (never `ray stop`, which ends every Ray on the machine).
Ray advertises a node given as 127.0.0.1 under the machine's own address (services.resolve_ip_for_localhost)
and its servers listen on all interfaces; the driver connects through 127.0.0.1:P.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

READY = "Ray runtime started"
START_TIMEOUT_S = 90.0
# Fast node-death detection: the head checks each raylet every 0.5 s and gives up after 3 misses.
FAST_HEALTH_CHECKS = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                      "RAY_health_check_failure_threshold": "3", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `ray start --block` and the processes it started (its process group)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
                                     stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while READY not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start did not come up: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        """The processes of this node's group, `ray start` included."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid:  # the process group id
                found.append(int(stat.parent.name))
        return found

    def raylet_pid(self) -> int:
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
            except OSError:
                continue
        raise RuntimeError("this node has no raylet")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to `ray start` (it stops what it started), then SIGKILL to what is left of its group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class LocalCluster:
    """A head node and a second node, CPUs per node as given."""

    def __init__(self, root: Path, cpus_per_node: int = 1, nodes: int = 2):
        self.root = root
        self.cpus = cpus_per_node
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, **FAST_HEALTH_CHECKS}
        # A short temp dir: Ray's unix sockets live under it (their paths are limited to 107 bytes).
        self.temp_dir = Path(f"/tmp/ab-ray-{os.getpid()}-{self.port}")
        self.nodes: list[Node] = []
        self.wanted = nodes

    def start(self) -> LocalCluster:
        head = Node(["--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
                     "--num-cpus", str(self.cpus), "--num-gpus", "0", "--temp-dir", str(self.temp_dir),
                     "--include-dashboard=false", "--disable-usage-stats"], self.root / "head.log", self.env)
        self.nodes.append(head)
        head.wait_ready()
        for _ in range(self.wanted - 1):
            self.add_node()
        return self

    def add_node(self) -> Node:
        args = ["--address", self.address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
                "--num-gpus", "0", "--disable-usage-stats"]
        node = Node(args, self.root / f"node{len(self.nodes)}.log", self.env)
        self.nodes.append(node)
        node.wait_ready()
        return node

    def ensure_nodes(self) -> None:
        """Bring the cluster back to its size after a test killed a node."""
        for node in [n for n in self.nodes[1:] if not n.alive()]:
            node.stop()
            self.nodes.remove(node)
        while len(self.nodes) < self.wanted:
            self.add_node()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()
