"""Plugins: variants and suites arrive through entry points; the harness never names them.

Two entry-point groups, declared in a package's pyproject.toml:

    [project.entry-points."attnbench.variants"]
    my-attention = "my_package.attention"     # a module whose import registers variants
    [project.entry-points."attnbench.suites"]
    my-suite = "my_package.suite"             # a module that declares what harness.suite asks of a suite

attnbench's own families and suites register the same way (see its pyproject.toml). A plugin that fails
to import, or a suite that lacks a member of the suite protocol, is recorded as a `Problem` (its package
and one line) and the rest keeps working: `attnbench list` shows the problems, and a run fails only when
it asks for what is broken.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from dataclasses import dataclass

from harness.suite import Suite

VARIANT_GROUP = "attnbench.variants"
SUITE_GROUP = "attnbench.suites"


@dataclass(frozen=True)
class Source:
    """Where a plugin comes from: its distribution and version (None when imported from a plain path)."""

    package: str
    version: str | None

    def __str__(self) -> str:
        return f"{self.package} {self.version}" if self.version else self.package


@dataclass(frozen=True)
class Problem:
    """A plugin (or one of its variants) that could not be registered, and why, in one line."""

    source: Source
    entry_point: str
    reason: str
    variant: str | None = None  # the variant it concerns, when known

    def line(self) -> str:
        what = f"variant {self.variant!r}" if self.variant else f"entry point {self.entry_point!r}"
        return f"{self.source}: {what}: {self.reason}"


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    # Unique by (name, value): an editable install can be seen twice (site-packages and a path entry).
    found = {(ep.name, ep.value): ep for ep in importlib.metadata.entry_points(group=group)}
    return sorted(found.values(), key=lambda ep: (ep.name, ep.value))


def source_of(ep: importlib.metadata.EntryPoint) -> Source:
    dist = ep.dist
    return Source(dist.name, dist.version) if dist is not None else Source(ep.value.split(".")[0], None)


@functools.cache
def _module_sources() -> dict[str, Source]:
    """Top-level import name of every variant plugin -> the distribution that declares it."""
    return {ep.value.split(".")[0].split(":")[0]: source_of(ep) for ep in _entry_points(VARIANT_GROUP)}


def source_of_module(module: str) -> Source:
    """The plugin a module belongs to; a module no entry point declares is its own source."""
    top = module.split(".")[0]
    return _module_sources().get(top, Source(top, None))


def load_variant_plugins() -> list[Problem]:
    """Import every variant plugin module (its decorators register its variants)."""
    problems = []
    for ep in _entry_points(VARIANT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not break the others
            problems.append(Problem(source_of(ep), ep.name, one_line(e)))
    return problems


def suite_names() -> list[str]:
    return sorted({ep.name for ep in _entry_points(SUITE_GROUP)})


class UnusableSuite(ValueError):
    """A suite that cannot be used: the message says why in one line, `problem` is its Problem."""

    def __init__(self, message: str, problem: Problem):
        super().__init__(message)
        self.problem = problem


def suite(name: str) -> Suite:
    """The suite registered under `name` (harness.suite); ValueError naming the valid suites otherwise,
    UnusableSuite saying in one line why it cannot be used."""
    matches = [ep for ep in _entry_points(SUITE_GROUP) if ep.name == name]
    if not matches:
        raise ValueError(f"unknown suite {name!r}; choose one of: {', '.join(suite_names())}")
    ep, source = matches[0], source_of(matches[0])
    if len({m.value for m in matches}) > 1:
        owners = ", ".join(str(source_of(m)) for m in matches)
        raise UnusableSuite(f"suite {name!r} is declared by several packages ({owners}); uninstall one",
                            Problem(source, name, f"declared by several packages ({owners}): usable by none"))
    try:
        return Suite.of(importlib.import_module(ep.value))
    except Exception as e:  # failing to import, or lacking a member of the protocol
        raise UnusableSuite(f"suite {name!r} from {source} failed to load: {one_line(e)}",
                            Problem(source, name, one_line(e))) from e


def suite_problems() -> list[Problem]:
    """The suites that cannot be used, each in one line (`attnbench list` shows them)."""
    problems = []
    for name in suite_names():
        try:
            suite(name)
        except UnusableSuite as e:
            problems.append(e.problem)
    return problems
