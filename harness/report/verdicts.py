"""The published findings a run decided: verdicts with their reasons, the trained precondition, figures
with intervals and seed counts, recipe changes, and evidence charts.

The learned-task suites write `findings.json` into the run directory after each run (the suites decide;
the report only reads what they wrote). Each finding holds the claim it tests and its source, its verdict
(reproduced, not reproduced, inconclusive, not testable at this budget, or no data) with a one-line
reason, the checks that decided it, each family's trained precondition (its accuracy at the easiest
condition beside the trivial baseline measured on the same test examples), a table of figures (mean and
95% interval with the seed count), a "recipe changed after results" label with its diff where the
experiment's recipe changed once rows existed, and the data of its charts: `lines` (accuracy against x
with an interval band per series), `bars` (an interval per series, with a published figure beside it
where there is one), `heatmap` (one panel per series over x and y) and `curves` (validation accuracy
against training steps, the band spanning the seeds). `harness.report.findings_doc` renders the same
for the documentation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from harness.report import charts, html

FINDINGS_FILE = "findings.json"
VERDICT_CLASS = {"reproduced": "ok", "not reproduced": "bad", "inconclusive": "warn",
                 "not testable at this budget": "warn", "no data": "none"}


def load(run_dirs) -> dict[str, dict]:
    """Findings by name from the runs' findings.json files (a later run's decided finding wins)."""
    found: dict[str, dict] = {}
    for run in run_dirs:
        path = Path(run) / FINDINGS_FILE
        if not path.exists():
            continue
        for name, finding in json.loads(path.read_text()).items():
            if finding.get("verdict") != "no data" or name not in found:
                found[name] = finding
    return found


def decided(found: dict[str, dict]) -> dict[str, dict]:
    return {k: f for k, f in found.items() if f.get("verdict") != "no data"}


# --- charts ---------------------------------------------------------------------------------------

def _colors(chart: dict) -> dict:
    return charts.palette([s["name"] for s in chart["series"]])


def _frame(series: dict) -> pd.DataFrame:
    return pd.DataFrame(series["points"]).sort_values("x")


def _references(ax, chart: dict) -> None:
    for label, y in chart.get("reference", {}).items():
        ax.axhline(y, color="0.45", linestyle=":", linewidth=1, gid=f"reference:{label}")
        ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-3, 2),
                    textcoords="offset points", ha="right", fontsize="x-small", color="0.35")


def _lines(chart: dict, curves: bool = False) -> Figure:
    colors = _colors(chart)
    with charts._style():
        fig = Figure(figsize=(6.6, 3.9), layout="constrained")
        ax = fig.subplots()
        for series in chart["series"]:
            points, color = _frame(series), colors[series["name"]]
            ax.plot(points.x, points["mean"], marker="" if curves else "o", markersize=4, color=color,
                    label=series["name"], gid=f"series:{series['name']}")
            ax.fill_between(points.x, points.low, points.high, color=color, alpha=0.18, linewidth=0,
                            gid=f"interval:{series['name']}")
        if chart.get("log_x"):
            charts._length_axis(ax, [p["x"] for s in chart["series"] for p in s["points"]])
        ax.set_xlabel(chart["x"])
        ax.set_ylabel(chart["y"])
        ax.set_ylim(-0.02, 1.05)
        _references(ax, chart)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        band = "range over seeds" if curves else "95% interval: t over seeds, with the test examples'"
        fig.suptitle(f"{chart['title']}\n(shaded: {band})", fontweight="bold", fontsize="medium")
    return fig


def _bars(chart: dict) -> Figure:
    colors = _colors(chart)
    rows = [(s["name"], p) for s in chart["series"] for p in s["points"]]
    with charts._style():
        fig = Figure(figsize=(max(4.8, 1.1 * len(rows) + 2.5), 3.8), layout="constrained")
        ax = fig.subplots()
        for i, (name, p) in enumerate(rows):
            ax.bar(i, p["mean"], color=colors[name], width=0.6, gid=f"series:{name}")
            ax.errorbar(i, p["mean"], yerr=[[p["mean"] - p["low"]], [p["high"] - p["mean"]]], color="0.1",
                        capsize=4, gid=f"interval:{name}")
            published = chart.get("published", {}).get(name)
            if published:
                ax.scatter([i + 0.38], [published[1]], marker="D", color="0.1", zorder=3, s=22,
                           gid=f"published:{name}")
                ax.annotate(published[0], (i + 0.38, published[1]), xytext=(4, 0),
                            textcoords="offset points", fontsize="x-small", rotation=90, va="bottom")
        ax.set_xticks(range(len(rows)), [name for name, _ in rows], rotation=20)
        ax.set_ylabel(chart["y"])
        ax.set_ylim(0, 1.05)
        _references(ax, chart)
        note = "; diamond: published figure" if chart.get("published") else ""
        fig.suptitle(f"{chart['title']}\n(bars: 95% interval, t over seeds with the test examples'{note})",
                     fontweight="bold", fontsize="medium")
    return fig


def _heatmap(chart: dict) -> Figure:
    series = chart["series"]
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    with charts._style():
        fig = Figure(figsize=(3.9 * cols + 0.8, 3.1 * rows + 0.6), layout="constrained")
        grid = fig.subplots(rows, cols, squeeze=False)
        for ax, s in zip(grid.flat, series, strict=False):
            cells = pd.DataFrame(s["points"]).pivot_table(index="y", columns="x", values="mean")
            sns.heatmap(cells, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", cbar=False, ax=ax,
                        linewidths=0.5)
            ax.set_title(s["name"])
            ax.set_xlabel(chart["x"])
            ax.set_ylabel(chart["y"])
            ax.set_gid(f"heatmap:{s['name']}")
        for ax in list(grid.flat)[len(series):]:
            ax.set_visible(False)
        fig.colorbar(grid.flat[0].collections[0], ax=grid, label="mean accuracy over seeds", shrink=0.8)
        fig.suptitle(chart["title"], fontweight="bold", fontsize="medium")
    return fig


def chart_figure(chart: dict) -> Figure | None:
    if not chart.get("series") or not any(s.get("points") for s in chart["series"]):
        return None
    kind = chart["kind"]
    if kind in ("lines", "curves"):
        return _lines(chart, curves=kind == "curves")
    if kind == "bars":
        return _bars(chart)
    if kind == "heatmap":
        return _heatmap(chart)
    raise ValueError(f"unknown chart kind {kind!r}")


def draw(found: dict[str, dict], out_dir: Path) -> dict[str, list[html.Chart]]:
    """Every evidence chart, saved under out_dir as finding-<name>-<i>.svg."""
    drawn: dict[str, list[html.Chart]] = {}
    for name, finding in decided(found).items():
        for i, chart in enumerate(finding.get("charts", [])):
            fig = chart_figure(chart)
            if fig is None:
                continue
            svg = charts.save(fig, out_dir, f"finding-{name}-{i}")
            drawn.setdefault(name, []).append(html.Chart(
                f"finding-{name}-{i}", chart["title"], _caption(chart), f"{out_dir.name}/{svg.name}"))
    return drawn


def _caption(chart: dict) -> str:
    if chart["kind"] == "curves":
        return "Validation accuracy during training: mean over seeds, shaded between the seeds."
    if chart["kind"] == "heatmap":
        return "Mean exact-match accuracy over seeds per (context length, depth); intervals in the table."
    return ("Mean over seeds with its 95% interval (t over the seed means, never narrower than the test "
            "examples allow); the trivial baseline is measured on the same test examples.")


# --- tables and text --------------------------------------------------------------------------------

def seeds_text(finding: dict) -> str:
    """Seeds per configuration the finding read: "3", or "3-5" where they differ."""
    seeds = finding.get("seeds") or {}
    if not seeds:
        return ""
    low, high = seeds.get("min"), seeds.get("max")
    return str(low) if low == high else f"{low}-{high}"


def _recipe_label(finding: dict) -> str:
    return (finding.get("recipe") or {}).get("label", "")


def verdict_table(found: dict[str, dict]) -> pd.DataFrame:
    return pd.DataFrame([{"finding": name, "verdict": f["verdict"], "reason": f.get("reason", ""),
                          "seeds": seeds_text(f), "recipe": _recipe_label(f),
                          "claim (source)": f"{f['claim']} ({f.get('source', '')})"}
                         for name, f in found.items()])


def interval_text(e: dict | None) -> str:
    """mean [low, high] (n=seeds) of an estimate's dict; "" without one."""
    if not e or e.get("mean") is None or not np.isfinite(e["mean"]):
        return ""
    seeds = f" (n={e['n_seeds']})" if e.get("n_seeds") is not None else ""
    return f"{e['mean']:.3f} [{e['low']:.3f}, {e['high']:.3f}]{seeds}"


def families_table(finding: dict) -> pd.DataFrame:
    """The trained precondition of each family: its accuracy at the easiest condition beside the trivial
    baseline measured on the same test examples, and the family's own verdict."""
    return pd.DataFrame([{"family": f["name"], "easiest condition": f["condition"],
                          "accuracy [95% interval] (seeds)": interval_text(f.get("accuracy")),
                          "trivial baseline": "" if f.get("baseline") is None else f"{f['baseline']:.3f}",
                          "trained": {True: "yes", False: "no"}.get(f.get("trained"), "undecided"),
                          "verdict": f.get("verdict") or ""}
                         for f in finding.get("families", [])])


def figures_table(finding: dict) -> pd.DataFrame:
    table = pd.DataFrame(finding.get("table", []))
    if table.empty:
        return table
    if {"mean", "low", "high"} <= set(table.columns):
        table.insert(len(table.columns) - 5 if len(table.columns) > 5 else 0, "accuracy [95% interval]",
                     [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(m) else "" for m, lo, hi in
                      zip(table["mean"], table["low"], table["high"], strict=True)])
        table = table.drop(columns=["mean", "low", "high"])
    return table.rename(columns={"n_seeds": "seeds"})


def _holds(holds) -> str:
    return {True: "holds", False: "fails"}.get(holds, "undecided")


def html_section(found: dict[str, dict], drawn: dict[str, list[html.Chart]]) -> str:
    if not found:
        return html.missing("no findings.json in these runs: `attnbench run --suite accuracy` (and "
                            "--suite long-range) writes one")
    body = html.table(verdict_table(found))
    for name, f in decided(found).items():
        checks = [f"<b>{html.esc(_holds(c['holds']))}</b>: {html.esc(c['text'])}"
                  + (f" <span class='figures'>({html.esc(c['figures'])})</span>" if c.get("figures") else "")
                  for c in f.get("checks", [])]
        css = VERDICT_CLASS.get(f["verdict"], "none")
        verdict = f"<span class='verdict-{css}'>{html.esc(f['verdict'])}</span>"
        label = _recipe_label(f)
        flag = f" <span class='verdict-warn'>({html.esc(label)})</span>" if label else ""
        body += (f"<h3 id='finding-{html.esc(name)}'>{html.esc(name)}: {verdict}{flag}</h3>"
                 f"<p><b>Claim</b> ({html.esc(f.get('source', ''))}): {html.esc(f['claim'])}</p>"
                 f"<p><b>Tested here</b>: {html.esc(f.get('test', ''))}</p>"
                 f"<p><b>Why</b>: {html.esc(f.get('reason', ''))} <span class='figures'>(seeds per "
                 f"configuration: {html.esc(seeds_text(f))})</span></p>")
        if label:
            body += (f"<p class='missing'>{html.esc(label)}: " + "; ".join(
                html.esc(line) for line in f["recipe"].get("diff", [])) + "</p>")
        if f.get("families"):
            body += (f"<p>Trained precondition (trivial baseline: {html.esc(f.get('baseline_rule', ''))})</p>"
                     + html.table(families_table(f)))
        body += "<ul>" + "".join(f"<li>{c}</li>" for c in checks) + "</ul>"
        body += "".join(html.figure(chart) for chart in drawn.get(name, []))
        body += ("<details><summary>Figures with intervals</summary>" + html.table(figures_table(f))
                 + "</details>")
    return body


def markdown_lines(found: dict[str, dict], md_table) -> list[str]:
    if not found:
        return []
    return ["## Findings", "", *finding_lines(found, md_table)]


def finding_lines(found: dict[str, dict], md_table, figures: bool = True) -> list[str]:
    """The verdict table, then each decided finding: claim, test, reason, precondition, checks (and with
    `figures` its table of figures)."""
    lines = [*md_table(verdict_table(found)), ""]
    for name, f in decided(found).items():
        label = _recipe_label(f)
        lines += [f"### {name}: {f['verdict']}" + (f" ({label})" if label else ""), "",
                  f"Claim ({f.get('source', '')}): {f['claim']}", "", f"Tested here: {f.get('test', '')}", "",
                  f"Why: {f.get('reason', '')} (seeds per configuration: {seeds_text(f)})", ""]
        if label:
            lines += [f"{label}:", *[f"- `{line}`" for line in f["recipe"].get("diff", [])], ""]
        if f.get("families"):
            lines += [f"Trained precondition (trivial baseline: {f.get('baseline_rule', '')}):", "",
                      *md_table(families_table(f)), ""]
        lines += [f"- {_holds(c['holds'])}: {c['text']}" + (f" ({c['figures']})" * bool(c.get("figures")))
                  for c in f.get("checks", [])]
        if figures:
            lines += ["", *md_table(figures_table(f), limit=60)]
        lines.append("")
    return lines
