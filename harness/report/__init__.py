"""Reporting and selection: charts, the HTML report and Markdown summary, run comparison, recommendations.

`build(...)` renders a report directory; `recommend.recommend(...)` ranks variants under constraints.
Only the modules that draw (charts, verdicts, and render, which calls them) import matplotlib and
seaborn: `build` and `Report` are looked up on first use, so that importing `harness.report.data` or
`harness.report.recommend` (as `attnbench recommend` does) loads no plotting library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.report.render import Report, build

__all__ = ["Report", "build"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("harness.report.render"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
