"""summary.md: the report in a few dozen lines, for a CI job summary or a PR comment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.report import data, verdicts
from harness.report.analysis import MIN_LENGTHS, Findings
from harness.report.compare import Comparison
from harness.report.correctness import Correctness
from harness.report.html import cell

MAX_ROWS = 24  # every registered variant fits
MAX_CROSSOVERS = 6


def md_table(df: pd.DataFrame, limit: int = MAX_ROWS) -> list[str]:
    shown = df.head(limit)
    lines = ["| " + " | ".join(map(str, shown.columns)) + " |", "|" + " --- |" * len(shown.columns)]
    lines += ["| " + " | ".join(cell(v).replace("|", "/") for v in row) + " |"
              for row in shown.itertuples(index=False)]
    if len(df) > limit:
        lines.append(f"\n_{len(df) - limit} more rows in the full report._")
    return lines


def _runs(results: data.Results) -> list[str]:
    lines = []
    for run, env in results.environments.items():
        facts = [data.short_device(env.get("device_name")), f"torch {env.get('torch')}"]
        if env.get("cuda"):
            facts.append(f"CUDA {env['cuda']}")
        facts.append(f"commit {env.get('commit')}")
        if env.get("merged_from"):
            facts.append(f"merged from {len(env['merged_from'])} runs")
        lines.append(f"- `{run}`: " + ", ".join(facts))
    for run, devices in data.mixed_devices(results.rows).items():
        lines.append(f"- **Mixed hardware**: `{run}` holds rows from {len(devices)} devices "
                     f"({', '.join(map(data.short_device, devices))}); compare timings per device.")
    return lines


def _statuses(rows: pd.DataFrame) -> str:
    counts = data.status_counts(rows)
    return "; ".join(f"{suite}: " + ", ".join(f"{n} {status}" for status, n in counts.loc[suite].items() if n)
                     for suite in counts.index)


def _throughput(findings: Findings, baselines: set[str]) -> list[str]:
    if not findings.headlines:
        ran_none = "_No throughput case ran ok: see the failures in the full report._"
        return [ran_none if len(findings.points) else "_No throughput results._"]
    lines = []
    ok = findings.points[findings.points.status == "ok"]
    for config in findings.headlines:
        largest = findings.largest[findings.largest.config == config].set_index("variant")
        fits = findings.fits[findings.fits.config == config].set_index("variant")
        fitted = ok[ok.config == config].groupby("series").seq_len.nunique()
        exponent = [f"{fits.exponent[v]:.2f} [{fits.k_low[v]:.2f}, {fits.k_high[v]:.2f}]"
                    + (" (noisy points)" if fits.noisy_points[v] > 0 else "") if v in fits.index
                    else f"n/a: {fitted.get(v, 0)} lengths ran" for v in largest.index]
        table = pd.DataFrame({"variant": largest.index,
                              "largest feasible N": largest.largest_feasible_n.values,
                              "then": largest.first_failure.values,
                              "k: time per sequence ~ N^k [95%]": exponent})
        reference_first = ~table.variant.isin(baselines)  # the reference row leads the table
        table = table.assign(_order=reference_first.values).sort_values(["_order", "variant"], kind="stable")
        lines += [f"### Throughput: {config}", *md_table(table.drop(columns="_order")), ""]
    ordered = sorted(findings.crossings, key=lambda c: c.config not in findings.headlines)
    if ordered:
        lines += ["**Crossovers**"] + [f"- {c.sentence}" for c in ordered[:MAX_CROSSOVERS]]
        if len(ordered) > MAX_CROSSOVERS:
            lines.append(f"- _{len(ordered) - MAX_CROSSOVERS} more in the full report_")
    else:
        lines.append(f"_No crossover: none measured over {MIN_LENGTHS} or more lengths._")
    return lines


def _timer_and_frontier(rows: pd.DataFrame) -> list[str]:
    lines = []
    checks = data.fidelity(rows)
    if not checks.empty:
        shown = checks[["variant", "level", "mode", "dtype", "seq_len", "latency_ms", "reference_latency_ms",
                        "fidelity_ratio", "reference_timer"]]
        lines += ["**Timer fidelity** (our median / an independent timer's, side by side)", *md_table(shown),
                  ""]
    frontier = data.frontier(rows)
    if not frontier.empty:
        shown = frontier[["variant", "dtype", "level", "memory_cap_gib", "largest_n", "predicted_max_n",
                          "next_n", "next_status"]]
        lines += ["**Memory frontier** (one forward call, batch 1)", *md_table(shown), ""]
    return lines


def default_models_sentence(rows: pd.DataFrame) -> str | None:
    """Which variants' cost estimates and memory predictions rest on the stated defaults, or None."""
    named = data.default_models(rows)
    if not named:
        return None
    return ("Assumed models: these variants declare no cost or memory model of their own, so the wall-time "
            "estimate and the frontier's prediction take the stated defaults (harness.costs): "
            + "; ".join(f"{variant} ({models})" for variant, models in named.items()) + ".")


def _default_models(rows: pd.DataFrame) -> list[str]:
    sentence = default_models_sentence(rows)
    return [] if sentence is None else [f"_{sentence}_", ""]


def _quality(findings: Findings) -> list[str]:
    per_task = data.task_accuracy(findings.best)
    if per_task.empty:
        return ["_No accuracy results._"]
    table = per_task.pivot(index="variant", columns="task", values="accuracy")
    table = table.assign(mean=table.mean(axis=1)).sort_values("mean", ascending=False).reset_index()
    return ["### Accuracy (best learning rate)", *md_table(table)]


def _comparison(comparison: Comparison) -> list[str]:
    regressions = comparison.regressions
    lines = [f"### Against `{comparison.baseline}` (threshold {comparison.threshold:.0%})",
             f"**{len(regressions)} regression(s)**, {len(comparison.improvements)} improvement(s) "
             f"in {len(comparison.changes)} comparisons."]
    if not regressions.empty:
        shown = regressions.drop(columns="verdict").assign(change=[
            "" if pd.isna(c) else f"{c:+.3f}" if w == "accuracy" else f"{c:+.1%}"
            for c, w in zip(regressions.change, regressions.what, strict=True)])
        lines += ["", *md_table(shown)]
    return lines


def summary(results: data.Results, findings: Findings, comparison: Comparison | None, page: Path,
            published: dict | None = None, correctness: Correctness | None = None) -> str:
    lines = ["## attnbench report", ""]
    if correctness is not None:  # first: a wrong kernel makes the rest meaningless
        lines += correctness.markdown(md_table)
    if (smoke := findings.smoke_sentence()) is not None:
        lines += [f"> **{smoke}**", ""]
    lines += [*_runs(results), "", f"Rows: {_statuses(results.rows)}", ""]
    lines += verdicts.markdown_lines(published or {}, md_table)
    lines += _throughput(findings, data.baseline_variants(results.rows)) + [""]
    lines += _timer_and_frontier(results.rows) + _quality(findings) + [""]
    lines += _default_models(results.rows)
    if comparison is not None:
        lines += _comparison(comparison) + [""]
    lines.append(f"Full report: `{page}`")
    return "\n".join(lines) + "\n"
