"""The environment a result was measured in: device, driver, versions, commit."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
OPTIONAL_PACKAGES = ("xformers", "fla-core", "mamba-ssm", "causal-conv1d", "triton", "nvidia-ml-py")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@functools.cache
def git_commit() -> str:
    """The commit of the harness, with '+dirty' when the tree has uncommitted changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GITHUB_SHA", "unknown")[:12]


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device"
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_governor() -> str | None:
    """The CPU frequency governor(s) (`performance`, `powersave`, ...), None where the kernel hides them
    (containers and many VMs have no cpufreq directory)."""
    found = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"):
        try:
            found.add(path.read_text().strip())
        except OSError:
            continue
    return ",".join(sorted(found)) or None


def cpu_threads() -> int:
    """Threads torch's CPU kernels use in this process (what a CPU measurement ran on)."""
    return torch.get_num_threads()


PROC_STAT = Path("/proc/stat")


def cpu_snapshot() -> tuple[float, float, float, int] | None:
    """(CPU seconds all cores have been busy since boot, hypervisor steal included; this process's CPU
    seconds; a wall clock; the cores counted), or None where /proc/stat is absent. Two snapshots give
    others_cpu_share."""
    try:
        lines = PROC_STAT.read_text().splitlines()
        ticks = [int(x) for x in lines[0].split()[1:9]]  # cpu user nice system idle iowait irq softirq steal
    except (OSError, IndexError, ValueError):
        return None
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    busy = sum(ticks) - ticks[3] - ticks[4]  # guest time is already inside user
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic(), max(cores, 1)


def others_cpu_share(before, after) -> float | None:
    """The share of the machine's CPU time that other processes (and the hypervisor's steal) used between
    two cpu_snapshot()s, 0 to 1: a timing taken while it is high measured the sharing, however steady."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    busy, own, wall = (a - b for a, b in zip(after[:3], before[:3], strict=True))
    return round(min(max((busy - own) / (wall * after[3]), 0.0), 1.0), 4)  # clock ticks: no finer


def nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else version
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no driver: not an error on a CPU machine
        return None


# The environment columns every result row carries (the whole environment sits beside the run): the
# machine a case ran on, so that merged runs and cluster runs still say where each row was measured.
ROW_FIELDS = ("hostname", "device_name", "driver", "cuda", "torch", "commit")


def row_fields(environment: dict) -> dict:
    return {k: environment.get(k) for k in ROW_FIELDS}


def describe(device: str = "cpu") -> dict:
    """A flat dict: goes beside every run and into every result row."""
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    return {
        "device": torch.device(device).type,
        "device_name": device_name(device),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "cpu_threads": cpu_threads(),
        "cpu_governor": cpu_governor(),
        "driver": nvidia_driver() if cuda else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "commit": git_commit(),
        **{f"pkg_{name.replace('-', '_')}": package_version(name) for name in OPTIONAL_PACKAGES},
    }
