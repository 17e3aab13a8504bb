"""The suites. Each is a module with a `Case` model, `plan(profile, device, variants, **options)` that
returns the cases of a profile, and `run_case(case) -> dict` that measures one case (run in a worker)."""

from __future__ import annotations

import importlib
from types import ModuleType

SUITES: dict[str, str] = {}  # suite name on the command line -> module path


def register(name: str, module: str) -> None:
    SUITES[name] = module


def get(name: str) -> ModuleType:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of: {', '.join(sorted(SUITES))}")
    return importlib.import_module(SUITES[name])


register("throughput", "suites.throughput")
register("accuracy", "suites.accuracy")
register("long-range", "suites.long_range")
