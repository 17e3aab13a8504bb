"""Reporting and selection: charts, the HTML report and Markdown summary, run comparison, recommendations.

`build(...)` renders a report directory; `recommend.recommend(...)` ranks variants under constraints.
"""

from harness.report.render import Report, build

__all__ = ["Report", "build"]
