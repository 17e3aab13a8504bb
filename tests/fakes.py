"""Fake field-library modules for CPU tests of CUDA call sites.

`install(monkeypatch, {"fla.ops.gla": {"chunk_gla": fn}})` puts modules with those functions (and their
parent packages) into sys.modules, so the call site's `from fla.ops.gla import chunk_gla` imports the fake.
A fake declares the library's exact parameter names (no **kwargs): a misspelt or extra keyword raises.
"""

from __future__ import annotations

import sys
import types


def install(monkeypatch, modules: dict[str, dict]) -> list[str]:
    """Returns the list of calls made to the fakes (their names, in order), so a test can assert that
    the library path ran."""
    calls = []

    def recorded(fn_name, fn):
        def call(*args, **kwargs):
            calls.append(fn_name)
            return fn(*args, **kwargs)
        return call

    for name, functions in modules.items():
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in sys.modules or not getattr(sys.modules[prefix], "_attnbench_fake", False):
                module = types.ModuleType(prefix)
                module._attnbench_fake = True
                module.__path__ = []  # a package, so submodules import
                monkeypatch.setitem(sys.modules, prefix, module)
        for fn_name, fn in functions.items():
            setattr(sys.modules[name], fn_name, recorded(fn_name, fn))
    return calls


def bthd_to_ours(*tensors):
    """The libraries' [B, T, H, ...] -> our (b, h, n, ...), in float64 for the reference."""
    return tuple(t.transpose(1, 2).double() for t in tensors)
