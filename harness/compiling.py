"""torch.compile for the fast paths and for the compiled series: static shapes, a recompile limit every
suite raises alike, a check that the compiled graph really ran, whether torch can compile here at all, and
the first (compiling) call, timed apart.

Past dynamo's recompile limit a compiled function silently runs eagerly: FlexAttention then computes
dense O(N^2) attention, and a benchmark would time the wrong thing. `Compiled` counts the runs of the
graphs its backend compiled, so a call that ran none of them is known to have run eagerly
(`eager_calls`); suites read the totals with `counts()` before and after a case.

The compiled series (`--compile`: a case with `compiled` true, docs/compile.md) wraps a variant's call in
`Compiled`. `unavailable_reason(device)` says, once per process and without compiling a graph, why torch
cannot compile there (no dynamo for this Python, no working C++ compiler for inductor on a CPU, no Triton
on a GPU); the command line exits 2 with it. `compiling_call` makes the first call, which traces and
compiles, and returns its seconds (`compile_s`: tracing, inductor's code generation and the C++ or Triton
build, cache hits included, and that one execution); the timed rounds come after it. A variant that cannot
compile is Unsupported: declared (`Support.torch_compile`), or the exception of its compiling call, in its
first line; a call that ran no compiled graph is Unsupported too (never timed as compiled while eager).
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.errors import one_line
from harness.registry import Unsupported
from harness.runner import is_oom

# Per code object (flex_attention, create_block_mask): a throughput run compiles one graph per shape.
RECOMPILE_LIMIT = 256
# dynamo's knobs, newest spelling first: torch 2.7 renamed cache_size_limit to recompile_limit.
LIMIT_KNOBS = (("recompile_limit", "cache_size_limit"),
               ("accumulated_recompile_limit", "accumulated_cache_size_limit"))


class EagerFallback(RuntimeError):
    """A compiled function ran eagerly (dynamo gave up on it): its timing would not be the kernel's."""


def knob_name(config: Any, spellings: tuple[str, ...]) -> str:
    """The spelling of a dynamo config knob that this torch has."""
    for name in spellings:
        if hasattr(config, name):
            return name
    raise AttributeError(f"torch {torch.__version__} has none of {', '.join(spellings)} in its dynamo config")


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT, config: Any = None) -> None:
    """Raise dynamo's recompile limits to at least `limit`, under whichever name this torch uses."""
    if config is None:
        import torch._dynamo  # noqa: F401  (loads the config module; seconds, so only when needed)

        config = torch._dynamo.config
    for spellings in LIMIT_KNOBS:
        name = knob_name(config, spellings)
        setattr(config, name, max(getattr(config, name), limit))


def allow_recompiles(device: str, reset: bool = False, compiled: bool = False) -> None:
    """Every suite's one call before a case: raise the recompile limits on CUDA, or for a case of the
    compiled series (where the compiled paths run; importing dynamo costs seconds, so an eager CPU case
    skips it). `reset` also drops every compiled graph: a throughput case has shapes of its own, and each
    cached graph adds a guard check to a call."""
    if torch.device(device).type != "cuda" and not compiled:
        return
    raise_recompile_limit()
    if reset:
        torch._dynamo.reset()


@dataclass(frozen=True)
class Counts:
    graph_calls: int  # calls of a Compiled that ran a compiled graph
    eager_calls: int  # calls of a Compiled that ran none: dynamo fell back to eager


_TOTALS = {"graph_calls": 0, "eager_calls": 0}


def counts() -> Counts:
    """Totals over every Compiled in this process."""
    return Counts(**_TOTALS)


def fallback_since(before: Counts) -> bool | None:
    """Whether a compiled call since `before` ran eagerly; None where no compiled function was called."""
    now = counts()
    if now == before:
        return None
    return now.eager_calls > before.eager_calls


def _inductor(gm, example_inputs):
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs)


class Compiled:
    """`torch.compile(fn, dynamic=False)` (inductor) whose calls know whether a compiled graph ran.

    The backend wraps each graph it compiles in a counter that passes every argument through, keeping
    the compiled callable's attributes (dynamo reads some of them, e.g. its boxed calling convention).
    `compiler` replaces inductor (tests use a cheap one); the counting is the same.
    """

    def __init__(self, fn: Callable, compiler: Callable | None = None):
        self.fn, self.compiler = fn, compiler or _inductor
        self.graph_runs = self.graph_calls = self.eager_calls = 0
        self.compiled = torch.compile(fn, dynamic=False, backend=self._backend)

    def _backend(self, gm, example_inputs):
        graph = self.compiler(gm, example_inputs)

        def run(*args, **kwargs):
            self.graph_runs += 1
            return graph(*args, **kwargs)

        return functools.update_wrapper(run, graph)

    def __call__(self, *args, **kwargs):
        before = self.graph_runs
        out = self.compiled(*args, **kwargs)
        key = "graph_calls" if self.graph_runs > before else "eager_calls"
        setattr(self, key, getattr(self, key) + 1)
        _TOTALS[key] += 1
        return out


# --- whether torch can compile here, and the compiled series' first call --------------------------------

PROBE_SOURCE = "int main() { return 0; }\n"
PROBE_TIMEOUT_S = 60.0


def _dynamo_reason() -> str | None:
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported

        check_if_dynamo_supported()
    except Exception as e:  # ImportError (a torch without dynamo), RuntimeError (this Python)
        return f"torch {torch.__version__} cannot run dynamo here ({one_line(e)})"
    return None


def _cpu_compiler_reason() -> str | None:
    """Inductor's C++ compiler on the CPU: found (inductor's own search) and able to build a tiny file."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        compiler = get_cpp_compiler()
    except Exception as e:
        return f"inductor finds no C++ compiler for the CPU ({one_line(e)}; set CXX or install g++)"
    try:
        done = subprocess.run([compiler, "-x", "c++", "-c", "-o", os.devnull, "-"], input=PROBE_SOURCE,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        return f"inductor's C++ compiler {compiler} does not run ({one_line(e)})"
    if done.returncode:
        first = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        return f"inductor's C++ compiler {compiler} cannot build a file ({first})"
    return None


def _gpu_compiler_reason() -> str | None:
    from torch.utils._triton import has_triton

    return None if has_triton() else "inductor needs Triton on the GPU, and it is not usable here"


@functools.cache
def unavailable_reason(device: str) -> str | None:
    """Why torch.compile (inductor) cannot run on this device type here, None where it can: probed once
    per process, without compiling a graph (dynamo's own check; then a C++ compiler that builds a tiny
    file on the CPU, Triton on the GPU). `unavailable_reason.cache_clear()` probes again."""
    reason = _dynamo_reason()
    if reason is None:
        reason = _gpu_compiler_reason() if torch.device(device).type == "cuda" else _cpu_compiler_reason()
    return None if reason is None else f"--compile: torch cannot compile on {device}: {reason}"


def compiling_call(call: Callable[[], Any], compiled: Compiled,
                   clock: Callable[[], float] | None = None) -> tuple[Any, float]:
    """The compiled series' first call: `call()`, which calls `compiled` and so traces and compiles it,
    timed by `clock`: (its output, seconds). Whatever it raises but Unsupported and memory errors becomes
    Unsupported with the exception's first line (the variant cannot compile: a row, never a crash), and
    so does a call that ran no compiled graph (dynamo left it eager). `clock`: time.perf_counter, the
    timed rounds' CPU clock, unless given."""
    clock = clock or time.perf_counter
    started = clock()
    try:
        out = call()
    except Unsupported:
        raise
    except Exception as e:
        if is_oom(e):
            raise
        # dynamo's BackendCompilerFailed says only which backend raised: the compiler's own error says why
        cause = getattr(e, "inner_exception", None) or e
        raise Unsupported(f"torch.compile failed: {one_line(cause)}") from e
    seconds = clock() - started
    if not compiled.graph_calls:
        raise Unsupported("torch.compile compiled no graph of this call: it would run eagerly")
    return out, seconds
