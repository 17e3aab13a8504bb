"""pytest-benchmark JSON into the results store: `pytest suites/bench_throughput.py --benchmark-json=F`
times the plan in pytest's process, and `import_benchmark_json(F, out)` (`attnbench import-benchmark`)
turns each of its benchmark records into a row, as `attnbench run` would have written it
(measuring.metrics_from_benchmark makes the metrics of both).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import env, runner, store
from suites.throughput.measuring import metrics_from_benchmark
from suites.throughput.planning import Case


def rows_from_benchmark_json(path: str | Path) -> list[dict[str, Any]]:
    """Rows of the results store from a `pytest suites/bench_throughput.py --benchmark-json=PATH` file."""
    return _rows_from_benchmark_report(json.loads(Path(path).read_text()))


def _rows_from_benchmark_report(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for bench in report["benchmarks"]:
        info = bench["extra_info"]
        case = Case(**info["case"])
        rows.append({
            "case_id": case.case_id, **case.flat(), **runner.variant_facts(case.variant), "status": "ok",
            "reason": "",
            **metrics_from_benchmark(bench),
            **env.row_fields(info["environment"]),
            "started_at": info["started_at"], "finished_at": info["finished_at"],
        })
    return rows


def import_benchmark_json(path: str | Path, out: str | Path) -> int:
    """Write the rows of a pytest-benchmark JSON file into run directory `out`; returns the row count."""
    report = json.loads(Path(path).read_text())
    if not report["benchmarks"]:
        return 0
    rows = _rows_from_benchmark_report(report)  # every row converts before anything is written
    run = store.RunStore(out)
    with run.lock():
        run.open(report["benchmarks"][0]["extra_info"]["environment"])
        for row in rows:
            run.write(row)
    return len(rows)
