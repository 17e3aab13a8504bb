"""Memory figures of a case, and a memory cap that makes out-of-memory reproducible.

On CUDA the figures are torch's allocator peaks. On the CPU, where torch keeps no such statistics, the
peak comes from the kernel: the resident-set high-water mark (VmHWM), reset before the call through
/proc/self/clear_refs, minus the resident set before the case built its inputs (null where /proc does
not allow the reset).

A cap applies to one case in the worker and is lifted afterwards; either way it means "at most cap_mb
MiB more than now". On CUDA it bounds the caching allocator (`torch.cuda.set_per_process_memory_fraction`
at what it has reserved plus the cap; exceeding it raises torch.OutOfMemoryError).
On the CPU it bounds the address space (RLIMIT_AS) to what the process maps now plus the cap; torch's
CPU allocator then fails with a RuntimeError, re-raised here as MemoryError, the CPU's out-of-memory
(the runner records both as "oom").
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from harness.registry import device_type

MIB = 2**20
_CPU_ALLOCATION_FAILED = "can't allocate memory"  # torch's DefaultCPUAllocator wording


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def address_space_bytes() -> int:
    """Virtual memory the process maps now (VmSize)."""
    return _status_bytes("VmSize")


def resident_bytes() -> int | None:
    """Resident memory of the process now (VmRSS); None without /proc."""
    try:
        return _status_bytes("VmRSS")
    except OSError:
        return None


def reset_resident_peak() -> bool:
    """Reset the resident-set high-water mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def resident_peak_bytes() -> int | None:
    try:
        return _status_bytes("VmHWM")
    except OSError:
        return None


def tensor_bytes(state: Any) -> int:
    """Bytes of the tensors reachable from `state` (dataclasses, tuples, lists, dicts, objects' fields),
    each storage counted once: what a decoding state holds, whatever its type."""
    seen_storages: set[int] = set()
    seen_objects: set[int] = set()

    def walk(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr() in seen_storages:
                return 0
            seen_storages.add(storage.data_ptr())
            return storage.nbytes()
        if id(obj) in seen_objects or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return 0
        seen_objects.add(id(obj))
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple, set, frozenset)):
            return sum(walk(v) for v in obj)
        if dataclasses.is_dataclass(obj):
            return sum(walk(getattr(obj, f.name)) for f in dataclasses.fields(obj))
        return sum(walk(v) for v in vars(obj).values()) if hasattr(obj, "__dict__") else 0

    return walk(state)


SAFETY_FRACTION = 0.9  # of the memory available, for a case that names no cap


def available_bytes() -> int | None:
    """Memory the machine can give now without swapping (MemAvailable); None without /proc."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def safety_cap_mb(device: str) -> int | None:
    """The cap a CPU case runs under when it names none: 90% of the memory available when it starts.

    A case too large for the machine (a quadratic kernel at a long length) then fails cleanly, as
    out of memory, instead of waking the kernel's OOM killer on a machine other processes share. CUDA
    needs none: its allocator raises before the device runs out.
    """
    available = available_bytes() if device_type(device) == "cpu" else None
    return None if available is None else int(available * SAFETY_FRACTION) // MIB


@contextmanager
def memory_cap(device: str, cap_mb: int | None) -> Iterator[None]:
    """Allow at most `cap_mb` more MiB inside the block (None: no cap)."""
    if cap_mb is None:
        yield
    elif device_type(device) == "cuda":
        with _cuda_cap(torch.device(device), cap_mb):
            yield
    else:
        with _cpu_cap(cap_mb):
            yield


@contextmanager
def _cuda_cap(device: torch.device, cap_mb: int) -> Iterator[None]:
    # The caching allocator refuses to reserve past fraction x total: what it holds now plus the cap.
    total = torch.cuda.get_device_properties(device).total_memory
    limit = torch.cuda.memory_reserved(device) + cap_mb * MIB
    torch.cuda.set_per_process_memory_fraction(min(limit / total, 1.0), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


@contextmanager
def _cpu_cap(cap_mb: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    torch.ones(1 << 16).sum()  # start torch's thread pool before the cap: thread stacks are address space
    limit = address_space_bytes() + cap_mb * MIB
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    except RuntimeError as e:
        if _CPU_ALLOCATION_FAILED in str(e):
            raise MemoryError(f"out of memory under a cap of {cap_mb} MiB: {str(e).splitlines()[0]}") from e
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def reset_peaks(device: str) -> bool:
    """Start a peak measurement; False where none can be taken (a CPU without the /proc reset)."""
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_resident_peak()


def read_peaks(device: str, resident_before: int | None = None) -> dict[str, int | None]:
    """Peaks since `reset_peaks`: torch's allocated and reserved bytes on CUDA; on the CPU, the resident
    high-water mark minus `resident_before` (the RSS before the case built anything), in
    `mem_rss_peak_bytes`."""
    if device_type(device) != "cuda":
        peak = resident_peak_bytes()
        rss = None if peak is None or resident_before is None else max(peak - resident_before, 0)
        return {"mem_alloc_peak_bytes": None, "mem_reserved_peak_bytes": None, "mem_rss_peak_bytes": rss}
    torch.cuda.synchronize(device)
    return {"mem_alloc_peak_bytes": torch.cuda.max_memory_allocated(device),
            "mem_reserved_peak_bytes": torch.cuda.max_memory_reserved(device), "mem_rss_peak_bytes": None}
