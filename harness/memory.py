"""Memory figures of a case, and a memory cap that makes out-of-memory reproducible.

The figures cover one call of a case, inputs included: `with call_memory(device) as meter:` opens before
the case builds its inputs, `meter.start_call()` comes right before the measured call and `meter.read()`
right after it.

On CUDA they are torch's allocator peaks (`torch.cuda.max_memory_allocated`, `max_memory_reserved`, reset
by `start_call`). The CPU allocator keeps no statistics; two independent figures stand there:

- `mem_tracked_peak_bytes`: the peak of the bytes torch's CPU allocator held for the case, from its build
  to the end of the call: every allocation and free of that allocator on the calling thread, from the
  torch profiler's memory events (`profile_memory`), matched by address so that a block the case did not
  allocate never counts. It sees every tensor whatever memory malloc reuses; it does not see memory
  outside torch's allocator (MKL's and oneDNN's own buffers, thread stacks, code) or an allocation made
  on another thread (an OpenMP worker inside a parallel region: ATen allocates a kernel's outputs and
  buffers before it parallelizes). Tracing costs about 2 us of CPU per operator, which would more than
  double a recurrent mixer's decode step (some 300 operators in 0.5 ms), so it covers the build and the
  measured call and stops there (`read`): a sweep's case measures its sizing call, which only sizes the
  rounds (a longer call means fewer rounds, on the safe side), never a timed round; a probe measures its
  one call.
- `mem_rss_peak_bytes`: the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs)
  during the measured call, minus the resident set before the build. It sees all of the process's memory,
  but a freed region that malloc reuses is resident already and is never counted again, so the heap's
  free pages are handed back to the kernel (glibc's `malloc_trim`) before the baseline and the call.
  It is kept only where it can be vouched for: with /proc's reset and `malloc_trim`, and at least the
  tracked figure (resident pages below what torch's allocator provably held mean reused memory, or pages
  never touched). Memory another allocator keeps for reuse (MKL's buffers) stays unseen.

A CPU figure left null says why in `mem_reason` ("rss: ...; tracked: ...").

A cap applies to one case in the worker and is lifted afterwards; either way it means "at most cap_mb
MiB more than now". On CUDA it bounds the caching allocator (`torch.cuda.set_per_process_memory_fraction`
at what it has reserved plus the cap; exceeding it raises torch.OutOfMemoryError).
On the CPU it bounds the address space (RLIMIT_AS) to what the process maps now plus the cap; torch's
CPU allocator then fails with a RuntimeError, re-raised here as MemoryError, the CPU's out-of-memory
(the runner records both as "oom").
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import resource
import sys
from collections.abc import Callable, Iterator
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


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Hand the heap's free pages back to the kernel (glibc's malloc_trim), so that memory freed earlier,
    which malloc reuses, is faulted in again and shows in the resident set. False without malloc_trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Kineto prints a line to stderr as a profiler session starts and stops: not for a run's output."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class AllocationTrace:
    """torch's CPU allocations on this thread over profiler sessions (`start`, `stop`): the bytes of the
    blocks allocated since the first session and not freed (`held`), and their peak since `mark`.

    A free counts only for a block the trace saw allocated (by address), so memory freed that another
    case left (garbage collected during the build) never lowers the figure.
    """

    def __init__(self) -> None:
        self.live: dict[int, int] = {}  # address -> bytes
        self.held = 0
        self.peak = 0
        self.reason: str | None = None  # why there is no figure
        self._session: Any = None

    def start(self) -> None:
        if self.reason is not None:
            return
        if torch.autograd._profiler_enabled():  # a second session would end the first one unannounced
            self.reason = "another profiler is running on this thread"
            return
        session = torch.autograd.profiler.profile(profile_memory=True)
        try:  # under a case's memory cap: its failure is the figure's, never the case's
            with _quiet_stderr():
                session.__enter__()
        except (RuntimeError, MemoryError, OSError) as e:
            self.reason = f"the profiler did not start ({_first_line(e)})"
            return
        self._session = session

    def stop(self, count: bool = True) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            with _quiet_stderr():
                session.__exit__(None, None, None)
        except (RuntimeError, MemoryError, OSError) as e:
            self.reason = self.reason or f"the profiler did not stop cleanly ({_first_line(e)})"
            return
        if not count:
            return
        try:
            events = _allocations(session.kineto_results)
        except (AttributeError, RuntimeError) as e:
            self.reason = f"the profiler gave no allocation events ({_first_line(e)})"
            return
        for address, nbytes in events:
            if nbytes > 0:
                self.held += nbytes - self.live.get(address, 0)
                self.live[address] = nbytes
            elif address in self.live:
                self.held -= self.live.pop(address)
            self.peak = max(self.peak, self.held)

    @property
    def running(self) -> bool:
        return self._session is not None

    def mark(self) -> None:
        """The peak counts from here: what the trace holds now, and any more it allocates later."""
        self.peak = self.held


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def _allocations(results: Any) -> list[tuple[int, int]]:
    """(address, bytes: + allocated, - freed) of the CPU allocator's events in a profiler session's
    results, in time order (ties in the order recorded)."""
    allocation = torch._C._profiler._EventType.Allocation
    found, stack = [], list(reversed(results.experimental_event_tree()))
    while stack:  # pre-order: a parent's events before its children's
        node = stack.pop()
        stack.extend(reversed(node.children))
        if node.tag == allocation and node.extra_fields.device.type == "cpu":
            found.append((node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size))
    found.sort(key=lambda e: e[0])
    return [(address, nbytes) for _, address, nbytes in found]


RSS_SLACK = 0.05  # the resident peak may sit this far below the tracked one (a page's rounding per block)


class CallMemory:
    """The memory figures of one call of a case, inputs included (see the module's docstring)."""

    def __init__(self, device: str) -> None:
        self.cuda = device_type(device) == "cuda"
        self.device = device
        self.trace = AllocationTrace()
        self.trimmed = False
        self.resident_before: int | None = None
        self.resettable = False
        if not self.cuda:  # the profiler's own memory (a first session maps its buffers) in the baseline
            self.trace.start()
            self.trimmed = trim_heap()
            self.resident_before = resident_bytes()

    def start_call(self) -> None:
        """Right before the measured call: its peaks count from here (on the CPU, the trace running since
        the build goes on through the call)."""
        if self.cuda:
            reset_peaks(self.device)
            return
        if self.trace.running:
            self._mark()
        self.trimmed = trim_heap() and self.trimmed
        self.resettable = reset_peaks(self.device)

    def _mark(self) -> None:
        self.trace.stop()
        self.trace.mark()
        self.trace.start()

    def read(self) -> dict[str, int | str | None]:
        """The figures, right after the measured call."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return {"mem_alloc_peak_bytes": torch.cuda.max_memory_allocated(self.device),
                    "mem_reserved_peak_bytes": torch.cuda.max_memory_reserved(self.device),
                    "mem_rss_peak_bytes": None, "mem_tracked_peak_bytes": None, "mem_reason": None}
        self.trace.stop()
        tracked = None if self.trace.reason else self.trace.peak
        rss, rss_reason = self._resident_peak(tracked)
        reasons = [f"rss: {rss_reason}"] if rss_reason else []
        reasons += [f"tracked: {self.trace.reason}"] if self.trace.reason else []
        return {"mem_alloc_peak_bytes": None, "mem_reserved_peak_bytes": None, "mem_rss_peak_bytes": rss,
                "mem_tracked_peak_bytes": tracked, "mem_reason": "; ".join(reasons) or None}

    def _resident_peak(self, tracked: int | None) -> tuple[int | None, str | None]:
        """The resident peak the call added, or None and why it cannot be vouched for."""
        peak = resident_peak_bytes() if self.resettable else None
        if peak is None or self.resident_before is None:
            return None, "no resident peak here (/proc/self/clear_refs cannot reset it)"
        if not self.trimmed:
            return None, "no malloc_trim: freed heap memory that malloc reuses would not be counted"
        if tracked is None:
            return None, "nothing to check it against (no tracked figure)"
        rss = max(peak - self.resident_before, 0)
        if rss < tracked * (1 - RSS_SLACK):
            return None, (f"{rss / MIB:.1f} MiB, below the {tracked / MIB:.1f} MiB torch's allocator held "
                          "(memory reused unseen, or pages never touched)")
        return rss, None


@contextmanager
def call_memory(device: str) -> Iterator[CallMemory]:
    """Measure one call's memory (CallMemory); opened before the case builds its inputs. On the CPU,
    tracing stops on the way out whatever happened (an out-of-memory error propagates unchanged)."""
    meter = CallMemory(device)
    try:
        yield meter
    finally:
        meter.trace.stop(count=False)
