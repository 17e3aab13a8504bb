"""The decision page: "which one?" answered per throughput configuration, read off the rows.

For each configuration (device x dtype x mode x causal, and whatever else varies in the results):
- at a glance, at a few lengths: the fastest exact kernel, the fastest variant, the one with the least
  peak memory, each with the runner-up it is not measurably faster than (its median's 95% interval);
- a ranking of every variant that ran: latency at those lengths, peak memory at the largest, and the
  learned tasks' accuracy per task. Accuracy is compared over one task set: a mean is given only for a
  variant that has every task any ranked variant has, the others say which they lack;
- a heatmap of latency over the baseline's (the variant the registry marks `baseline`), variant x N;
- the crossovers as a matrix: the cell (row, column) says from which N the row beats the column.
Noisy cells (the median's interval stayed wider than +-2%) carry NOISY_MARK; variants unsupported in a
configuration are one line, counted, with their reasons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report import analysis, data, html
from harness.report.analysis import Crossing, Findings

RANKED_LENGTHS = 3  # the lengths a ranking reads: the shortest, the longest and one between
NOISY_MARK = "\u2020"  # dagger
HEAT_CLIP = 3.0  # log2 of the ratio where the heatmap's colour saturates (8x faster or slower)
FASTER, SLOWER, EVEN = np.array([26, 152, 80]), np.array([215, 48, 39]), np.array([255, 255, 255])


@dataclass
class Decision:
    """What the page shows for one configuration."""

    config: str
    lengths: list[int]
    glance: pd.DataFrame  # one row per ranked length
    ranking: pd.DataFrame  # one row per variant that ran, fastest first at the longest ranked length
    relative: pd.DataFrame  # series x N: latency / the baseline's (empty without a baseline)
    baseline: str | None
    baseline_note: str  # how the baseline was chosen, when the rows mark none that ran here
    crossovers: pd.DataFrame  # faster x slower: the estimated N from which the row beats the column
    crossings: list[Crossing]
    unsupported: pd.DataFrame  # reason, variants, count


def decisions(findings: Findings, rows: pd.DataFrame) -> list[Decision]:
    """One Decision per configuration with at least one measured point, the headline ones first."""
    ok = findings.points[findings.points.status == "ok"]
    configs = sorted(set(ok.config), key=lambda c: (c not in findings.headlines, c))
    accuracy = data.task_accuracy(findings.best)
    baselines = data.baseline_variants(rows)
    return [decide(findings.points[findings.points.config == c], accuracy, baselines,
                   [x for x in findings.crossings if x.config == c]) for c in configs]


def decide(points: pd.DataFrame, accuracy: pd.DataFrame, baselines: set[str],
           crossings: list[Crossing]) -> Decision:
    ok = points[(points.status == "ok") & points.latency_ms.notna()]
    lengths = ranked_lengths(ok)
    ranking = rank(ok, lengths, accuracy)
    order = list(ranking.variant)
    baseline, why = reference_series(ok, baselines, order)
    return Decision(config=str(points.config.iloc[0]), lengths=lengths, glance=glance(ok, lengths),
                    ranking=ranking, relative=relative_latency(ok, baseline, order), baseline=baseline,
                    baseline_note=why,
                    crossovers=crossover_matrix(crossings, order), crossings=crossings,
                    unsupported=unsupported(points))


def ranked_lengths(ok: pd.DataFrame) -> list[int]:
    """Up to RANKED_LENGTHS lengths where at least two variants ran: the shortest, the longest and the
    one nearest their geometric middle."""
    counts = ok.groupby("seq_len").series.nunique()
    shared = sorted(int(n) for n in counts[counts >= 2].index) or sorted(int(n) for n in counts.index)
    if len(shared) <= RANKED_LENGTHS:
        return shared
    middle = math.sqrt(shared[0] * shared[-1])
    between = min(shared[1:-1], key=lambda n: abs(math.log(n / middle)))
    return [shared[0], between, shared[-1]]


def _at(ok: pd.DataFrame, n: int) -> pd.DataFrame:
    return ok[ok.seq_len == n].set_index("series").sort_values("latency_ms")


def _measurably_faster(a, b) -> bool:
    """a's median plus its interval below b's median minus b's (analysis.crossings' rule)."""
    ua, ub = (max(analysis.NOISE_FLOOR, 0.0 if pd.isna(x) else x) for x in (a.median_ci, b.median_ci))
    return a.latency_ms * (1 + ua) < b.latency_ms * (1 - ub)


def _winner(at_n: pd.DataFrame, column: str, show, none: str) -> str:
    """The first row of `at_n` (already in order), its figure, and the runners-up it does not beat
    measurably (by latency); `none` where there is no row."""
    if at_n.empty:
        return none
    best, first = at_n.iloc[0], at_n.index[0]
    text = f"{first} ({show(best[column])}{NOISY_MARK * bool(best.noisy > 0)})"
    if column != "latency_ms":
        return text
    ties = [s for s, r in at_n.iloc[1:].iterrows() if not _measurably_faster(best, r)]
    return text + (f", within noise of {', '.join(ties)}" if ties else "")


def glance(ok: pd.DataFrame, lengths: list[int]) -> pd.DataFrame:
    rows = []
    for n in lengths:
        at_n = _at(ok, n)
        exact = at_n[at_n.exact == True]  # noqa: E712 (an object column: True, False or missing)
        memory = at_n[at_n.mem_peak_bytes.notna()].sort_values("mem_peak_bytes")
        rows.append({"N": n, "fastest exact kernel": _winner(exact, "latency_ms", milliseconds, "none ran"),
                     "fastest": _winner(at_n, "latency_ms", milliseconds, "none ran"),
                     "least peak memory": _winner(memory, "mem_peak_bytes", byte_size, "not measured"),
                     "ran": f"{len(at_n)} variants"})
    return pd.DataFrame(rows, columns=["N", "fastest exact kernel", "fastest", "least peak memory", "ran"])


def milliseconds(value: float) -> str:
    return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"


def byte_size(value: float) -> str:
    if pd.isna(value):
        return ""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _latency_cell(point) -> str:
    return "" if point is None else milliseconds(point.latency_ms) + NOISY_MARK * bool(point.noisy > 0)


def rank(ok: pd.DataFrame, lengths: list[int], accuracy: pd.DataFrame) -> pd.DataFrame:
    """Every series that ran at a ranked length, fastest first at the longest length it ran of them."""
    series = sorted(set(ok.series[ok.seq_len.isin(lengths)]))
    by_n = {n: _at(ok, n) for n in lengths}
    longest_first = list(reversed(lengths))
    key = {s: next((i, by_n[n].latency_ms[s]) for i, n in enumerate(longest_first) if s in by_n[n].index)
           for s in series}
    series.sort(key=lambda s: (key[s], s))
    first = ok.drop_duplicates("series").set_index("series")
    table = pd.DataFrame({"variant": series, "family": [first.family[s] for s in series],
                          "exact": [first.exact[s] for s in series]})
    for n in lengths:
        table[f"N = {n}"] = [_latency_cell(by_n[n].loc[s] if s in by_n[n].index else None) for s in series]
    longest = by_n[lengths[-1]] if lengths else pd.DataFrame()
    table[f"peak memory at {lengths[-1] if lengths else ''}"] = [
        byte_size(longest.mem_peak_bytes[s]) if s in longest.index else "" for s in series]
    variant_of = {s: first.variant[s] for s in series}
    return pd.concat([table, accuracy_columns(accuracy, [variant_of[s] for s in series])], axis=1)


def accuracy_columns(accuracy: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """Per task, each variant's accuracy; `mean (all tasks)` only where a variant has every task that any
    of `variants` has (a mean over fewer tasks would not compare), else which tasks it lacks."""
    have = accuracy[accuracy.variant.isin(variants)]
    if have.empty:
        return pd.DataFrame(index=range(len(variants)))
    table = have.pivot_table(index="variant", columns="task", values="accuracy").reindex(variants)
    tasks = list(table.columns)
    columns = {f"accuracy: {t}": [html.cell(round(v, 3)) for v in table[t]] for t in tasks}
    columns["mean (all tasks)"] = [
        "" if row.isna().all() else f"{row.mean():.3f}" if row.notna().all()
        else "lacks " + ", ".join(t for t in tasks if pd.isna(row[t])) for _, row in table.iterrows()]
    return pd.DataFrame(columns)


def reference_series(ok: pd.DataFrame, baselines: set[str], order: list[str]) -> tuple[str | None, str]:
    """The series latency is compared with: the registry's baseline (rows' `baseline`) where it ran here,
    else the exact series measured at the most lengths (named, with why), else none."""
    marked = [s for s in order if ok.variant[ok.series == s].isin(baselines).any()]
    if marked:
        return marked[0], ""
    exact = ok[ok.exact == True]  # noqa: E712
    if exact.empty:
        return None, "no baseline variant and no exact variant ran in this configuration"
    counts = exact.groupby("series").seq_len.nunique()
    chosen = sorted(counts.index, key=lambda s: (-counts[s], s))[0]
    why = ("no variant these rows mark as the baseline ran here" if baselines else
           "these rows mark no baseline (written before variants recorded it)")
    return chosen, f"{why}: {chosen}, the exact variant measured at the most lengths, stands in"


def relative_latency(ok: pd.DataFrame, baseline: str | None, order: list[str]) -> pd.DataFrame:
    """series x N: latency over the baseline's at the same N (empty without a baseline)."""
    if baseline is None:
        return pd.DataFrame()
    latency = ok.pivot_table(index="series", columns="seq_len", values="latency_ms")
    return latency.div(latency.loc[baseline], axis=1).reindex(order)


def crossover_matrix(crossings: list[Crossing], order: list[str]) -> pd.DataFrame:
    """faster (row) x slower (column): the N from which the row beats the column, for the series in any
    crossing, in the ranking's order."""
    names = [s for s in order if any(s in (c.faster, c.slower) for c in crossings)]
    matrix = pd.DataFrame(np.nan, index=names, columns=names)
    for c in crossings:
        matrix.loc[c.faster, c.slower] = c.estimate
    return matrix


def unsupported(points: pd.DataFrame) -> pd.DataFrame:
    """The series that ran at no length because they are unsupported there, by reason."""
    never = points.groupby("series").status.agg(lambda s: (s == "unsupported").all())
    gone = points[points.series.isin(never[never].index)].drop_duplicates("series")
    grouped = gone.fillna({"reason": ""}).groupby("reason").series.agg(sorted)
    return pd.DataFrame({"reason": grouped.index, "variants": [", ".join(v) for v in grouped],
                         "count": [len(v) for v in grouped]})


# --- HTML ---------------------------------------------------------------------------------------------

def html_section(findings: Findings, rows: pd.DataFrame) -> str:
    found = decisions(findings, rows)
    if not found:
        return html.missing("No throughput measurement: run `attnbench run --suite throughput` first.")
    intro = (f"<p>Per configuration: the winners at a few lengths, every variant ranked, latency against the "
             f"baseline, and where one variant overtakes another. {NOISY_MARK}: a noisy median (its 95% "
             "interval stayed wider than &plusmn;2%); <em>within noise of</em>: a runner-up the winner is "
             "not measurably faster than.</p>")
    nav = "<p>" + " &middot; ".join(f'<a href="#{_anchor(i)}">{html.esc(d.config)}</a>'
                                    for i, d in enumerate(found)) + "</p>" if len(found) > 1 else ""
    return intro + nav + "".join(_config_html(i, d) for i, d in enumerate(found))


def _anchor(i: int) -> str:
    return f"decision-{i}"


def _config_html(i: int, d: Decision) -> str:
    body = f'<h3 id="{_anchor(i)}">{html.esc(d.config)}</h3>' + html.table(d.glance)
    if not d.unsupported.empty:
        body += "<p>" + "; ".join(f"{r.count} unsupported ({html.esc(r.reason or 'no reason given')}): "
                                  f"{html.esc(r.variants)}" for r in d.unsupported.itertuples()) + "</p>"
    body += "<h4>Ranking</h4>" + html.table(d.ranking)
    body += _heatmap_html(d) + _crossovers_html(d)
    return body


def heat_color(ratio: float) -> str:
    """White at 1, green where faster than the baseline, red where slower, saturating at 2^HEAT_CLIP."""
    if not np.isfinite(ratio) or ratio <= 0:
        return "#ffffff"
    t = max(-1.0, min(1.0, math.log2(ratio) / HEAT_CLIP))
    rgb = EVEN + ((SLOWER if t > 0 else FASTER) - EVEN) * abs(t)
    return "#" + "".join(f"{int(round(c)):02x}" for c in rgb)


def _heatmap_html(d: Decision) -> str:
    if d.baseline is None:
        return html.missing(f"No relative latency: {d.baseline_note}.")
    cells = {(s, n): (f"{r:.3g}\u00d7", heat_color(r), f"{s} / {d.baseline} at N = {n}")
             for s in d.relative.index for n in d.relative.columns if np.isfinite(r := d.relative.loc[s, n])}
    head = (f"<h4>Latency relative to {html.esc(d.baseline)}</h4><p>Latency / {html.esc(d.baseline)}'s "
            "at the same N: green faster, red slower; empty: not run at that N."
            + (f" {html.esc(d.baseline_note)}." if d.baseline_note else "") + "</p>")
    return head + html.grid("variant", list(d.relative.index), list(d.relative.columns), cells)


def _crossovers_html(d: Decision) -> str:
    if d.crossovers.empty:
        return "<h4>Crossovers</h4><p>No latency crossover beyond the noise.</p>"
    cells = {(c.faster, c.slower): (f"\u2248 {c.estimate:.0f}", "", c.sentence) for c in d.crossings}
    head = ("<h4>Crossovers</h4><p>The row beats the column from N &asymp; the number in the cell "
            "(measurably slower before, measurably faster from there on; hover for the lengths that decide "
            "it).</p>")
    return head + html.grid("row beats column", list(d.crossovers.index), list(d.crossovers.columns), cells)
