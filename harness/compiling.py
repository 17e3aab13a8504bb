"""torch.compile for the fast paths: static shapes, a recompile limit every suite raises alike, and a
check that the compiled graph really ran.

Past dynamo's recompile limit a compiled function silently runs eagerly: FlexAttention then computes
dense O(N^2) attention, and a benchmark would time the wrong thing. `Compiled` counts the runs of the
graphs its backend compiled, so a call that ran none of them is known to have run eagerly
(`eager_calls`); suites read the totals with `counts()` before and after a case.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

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


def allow_recompiles(device: str, reset: bool = False) -> None:
    """Every suite's one call before a case: raise the recompile limits on CUDA (where the compiled
    paths run; importing dynamo costs seconds, so the CPU skips it). `reset` also drops every compiled
    graph: a throughput case has shapes of its own, and each cached graph adds a guard check to a call."""
    if torch.device(device).type != "cuda":
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
