"""Memory figures of a case, and a memory cap that makes out-of-memory reproducible.

A cap applies to one case in the worker and is lifted afterwards; either way it means "at most cap_mb
MiB more than now". On CUDA it bounds the caching allocator (`torch.cuda.set_per_process_memory_fraction`
at what it has reserved plus the cap; exceeding it raises torch.OutOfMemoryError).
On the CPU it bounds the address space (RLIMIT_AS) to what the process maps now plus the cap; torch's
CPU allocator then fails with a RuntimeError, re-raised here as MemoryError, the CPU's out-of-memory
(the runner records both as "oom").
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from harness.registry import device_type

MIB = 2**20
_CPU_ALLOCATION_FAILED = "can't allocate memory"  # torch's DefaultCPUAllocator wording


def address_space_bytes() -> int:
    """Virtual memory the process maps now (VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmSize in /proc/self/status")


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


def reset_peaks(device: str) -> None:
    if device_type(device) == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def read_peaks(device: str) -> dict[str, int | None]:
    """Peak allocated and reserved bytes since `reset_peaks` (torch's allocator; null on the CPU)."""
    if device_type(device) != "cuda":
        return {"mem_alloc_peak_bytes": None, "mem_reserved_peak_bytes": None}
    torch.cuda.synchronize(device)
    return {"mem_alloc_peak_bytes": torch.cuda.max_memory_allocated(device),
            "mem_reserved_peak_bytes": torch.cuda.max_memory_reserved(device)}
