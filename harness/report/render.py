"""`attnbench report`: results directories in, a report directory out (report.html, summary.md, charts/)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.report import analysis, charts, data, decision, html, markdown, recommend_section, verdicts
from harness.report.analysis import Findings, pareto_lengths
from harness.report.compare import Comparison, compare
from harness.report.correctness import Correctness
from harness.report.html import Chart

CHARTS_DIR = "charts"
REPORT_DIR = "report"  # the default report directory, inside the (first) run directory
# The parts of the results (data.smoke_reasons) each chart shows: its smoke-run label comes from them.
CHART_PARTS = {"latency": ("throughput",), "memory": ("throughput",), "tflops": ("throughput",),
               "tokens": ("throughput",), "energy": ("throughput",), "exactness": ("exactness",),
               "approximation": ("exactness",),
               "accuracy": ("learned",), "long_range": ("learned",), "passkey": ("learned",),
               "pareto": ("throughput", "learned"), "ratio": ("throughput",), "decode_state": ("throughput",),
               "gqa_memory": ("throughput",), "serving_profile": ("throughput",),
               "compiled": ("throughput",), "ragged": ("throughput",)}
CAPTIONS = {
    "latency": "Median latency of one call (batch x N tokens) per variant, log-log; shaded: 20th-80th "
               "percentile; X at the top of a panel: out of memory at that N; star: the largest N that ran "
               "where a larger one failed for its size (none where nothing failed); ring: a noisy point (its "
               "median's 95% interval stayed wider than +-2%).",
    "memory": "Peak memory of one call, inputs included: the bytes torch's allocator held at the peak (CUDA: "
              "its statistics; CPU: every allocation traced, not MKL's or oneDNN's own buffers); dashed: the "
              "device's memory; dotted with x marks, where the rows carry it: the memory model's prediction "
              "of the same call's buffers (the variant's peak_bytes model, kernel-level forward rows).",
    "tflops": "Achieved TFLOP/s, for softmax kernels only (FLOPs of the visible query-key pairs; backward "
              "2.5x forward); right axis: percent of the matmul peak measured on the same device in the "
              "panel's precision.",
    "tokens": "Tokens processed per second (batch x N / latency).",
    "energy": "Energy per token from the device's power readings during the timed calls.",
    "exactness": "Implementation error: the worst relative error of each variant's output against its "
                 "float64 reference on the same inputs rounded to its dtype, over the dtypes, per input "
                 "kind: softmax under its mask for an exact variant, its own naive reference for an "
                 "approximation, kernel_reference for a mixer-only family; n/a: not measured for that "
                 "variant. The Correctness section judges each against its dtype's tolerance.",
    "approximation": "Approximation error: how far each approximation (not exact softmax attention) is "
                     "from softmax attention, worst relative error per input kind. A property of the method, "
                     "not a fault of the implementation: no tolerance judges it.",
    "accuracy": "Accuracy on held-out data at each model's best learning rate, averaged over the task's "
                "evaluations and seeds.",
    "long_range": "Accuracy against evaluation length (best learning rate per trained model).",
    "passkey": "Passkey retrieval accuracy by context length and depth of the key (0 = start).",
    "pareto": "Mean accuracy (tasks every plotted variant has) against tokens/s at one length; dashed: "
              "the Pareto front, the variants no other beats on both.",
    "ratio": "This run's latency over the baseline's, per case; shaded: within the regression threshold.",
    "ragged": "Ragged batches (docs/ragged.md): tokens per second over the real tokens alone (a padded "
              "batch's padding computed but not counted), padded (hatched) against packed (solid) per "
              "variant, in its family's colour; lengths drawn from the named distribution, the same batch "
              "for both layouts. n/a: the layout did not run (the table below says why).",
    "decode_state": "Bytes of state one sequence carries into decoding at context N: the KV cache of the "
                    "attention families (grows with N), the recurrent state of linear, performer and mamba "
                    "(constant); measured by walking the state's tensors after prefill. The attention "
                    "families share one line: the same KV cache.",
    "gqa_memory": "Decode state one sequence holds against the KV heads (grouped-query attention), at the "
                  "longest context decoded at several KV head counts: the KV cache shrinks with the KV "
                  "heads, a recurrent state with its groups; a mixer with no KV heads is one point.",
    "serving_profile": "Per variant at each context measured, causal: time to first token (one prompt's "
                       "forward), decode tokens/s per user (1000 / one sequence's decode step) and the "
                       "decode state per sequence; a model preset's rows (`run --model`) are one layer's "
                       "measurement x its layers, as the panel says; other rows are one layer.",
    "compiled": "Median latency of each variant eager (solid, filled) and under torch.compile (dashed, "
                "hollow markers, same colour), per family: the steady-state calls after the compiling one, "
                "whose seconds (compile_s) are in the table below and in none of these figures; x at the top:"
                " the compiled series did not run there (the table gives the reason).",
}


@dataclass
class Report:
    html: Path
    markdown: Path
    charts: list[Chart]
    findings: Findings
    comparison: Comparison | None
    correctness: Correctness | None = None
    left_out: dict[str, str] | None = None  # chart name -> why the rows cannot draw it


def build(paths: list[str | Path], out: str | Path | None = None, baseline: str | Path | None = None,
          threshold: float = 0.05, pareto_n: int | None = None) -> Report:
    """Render the report of `paths` (run directories or folders of runs) into `out`.

    ValueError (one line) when the request cannot be met: no rows, a --pareto-n where no chart can be
    drawn, a baseline that shares nothing with the results.
    """
    results = data.Results.load(*paths)
    if results.rows.empty:
        raise ValueError(f"no result rows under {', '.join(map(str, paths))}: run `attnbench run` first")
    out = Path(out) if out is not None else Path(paths[0]) / REPORT_DIR
    before = data.Results.load(baseline) if baseline is not None else None
    if before is not None and before.rows.empty:
        raise ValueError(f"no result rows under the baseline {baseline}")
    findings = Findings.compute(results.rows, pareto_n)
    if pareto_n is not None and findings.pareto is None:
        lengths = pareto_lengths(findings.points, findings.best)
        raise ValueError(f"--pareto-n {pareto_n}: no quality-vs-throughput chart at that length; "
                         + (f"lengths with both figures: {', '.join(map(str, lengths))}" if lengths else
                            "the results need throughput and accuracy rows of the same variants"))
    comparison = compare(results, before, threshold, str(baseline)) if before is not None else None
    if comparison is not None and comparison.changes.empty:
        raise ValueError(f"--compare {baseline} shares no measured case with {', '.join(map(str, paths))} "
                         f"(same suite, configuration and status ok in both): nothing to compare")
    drawn, left_out = draw(findings, comparison, out)
    published = verdicts.load(results.environments)  # the suites' verdicts on the published findings
    for stale in (out / CHARTS_DIR).glob("finding-*"):
        stale.unlink()
    evidence = verdicts.draw(published, out / CHARTS_DIR)
    sections = html_sections(results, findings, drawn, comparison, before, paths, left_out)
    sections.insert(2, ("findings", "Published findings", verdicts.html_section(published, evidence)))
    sections.insert(3, ("serving", "Serving", figures_or_reasons(drawn, left_out, "serving_profile")
                        + recommend_section.html_section(results.rows)))
    correctness = Correctness.of(results)
    sections[:0] = front(correctness, decision.html_section(findings, results.rows))
    subtitle = (f"{', '.join(map(str, paths))}; generated "
                f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    page = html.write(out / "report.html", html.page("attnbench report", subtitle, sections,
                                                     banner=smoke_banner(findings)))
    summary = markdown.summary(results, findings, comparison, page, published, correctness)
    md = html.write(out / "summary.md", summary)
    return Report(page, md, list(drawn.values()), findings, comparison, correctness, left_out)


def front(correctness: Correctness, choice: str) -> list[tuple[str, str, str]]:
    """The first sections: the decision page, but a failed correctness gate before it (a wrong kernel makes
    the rest meaningless)."""
    gate = ("correctness", "Correctness", correctness.html())
    page = ("decision", "Which one? The decision page", choice)
    return [gate, page] if correctness.failed else [page, gate]


def smoke_banner(findings: Findings) -> str:
    text = findings.smoke_sentence()
    return f'<p class="smoke"><strong>{html.esc(text)}</strong></p>' if text else ""


def draw(findings: Findings, comparison: Comparison | None,
         out: Path) -> tuple[dict[str, Chart], dict[str, str]]:
    """Every chart the data allows, saved as SVG under out/charts; and the promised charts the data does not
    allow, each with why (charts.LeftOut)."""
    colors = charts.palette(findings.families())
    pts, best, exact = findings.points, findings.best, findings.exactness
    figures = {
        "latency": ("Latency", charts.latency_chart(pts, colors, findings.largest)),
        "memory": ("Peak memory", charts.memory_chart(pts, colors)),
        "tflops": ("TFLOP/s and % of peak", charts.tflops_chart(pts, colors)),
        "tokens": ("Tokens per second", charts.tokens_chart(pts, colors)),
        "energy": ("Energy per token", charts.energy_chart(pts, colors)),
        "decode_state": ("Decode state per sequence", charts.decode_state_chart(pts, colors)),
        "gqa_memory": ("Decode state vs KV heads", charts.gqa_memory_chart(pts, colors)),
        "serving_profile": ("Serving profile", charts.serving_profile_chart(pts, colors)),
        "ragged": ("Padded vs packed", charts.ragged_chart(findings.ragged, colors)),
        "exactness": ("Implementation error", charts.exactness_chart(data.implementation_error(exact))),
        "approximation": ("Approximation error", charts.exactness_chart(
            data.approximation_error(exact), title="Approximation error against softmax attention")),
        "accuracy": ("Accuracy by task", charts.accuracy_chart(data.task_accuracy(best), colors)),
        "long_range": ("Long-range accuracy", charts.long_range_chart(best, colors)),
        "passkey": ("Passkey retrieval", charts.passkey_chart(best)),
        "pareto": ("Quality vs throughput", charts.pareto_chart(findings.pareto, colors)),
        "compiled": ("Compiled against eager", charts.compiled_chart(findings.compiled, colors)),
    }
    if comparison is not None:
        figures["ratio"] = ("Latency against the baseline",
                            charts.ratio_chart(comparison.ratios, comparison.threshold, colors))
    for stale in CAPTIONS:  # charts of an earlier report into the same directory
        for suffix in (".png", ".svg"):  # PNGs too: reports before SVG alone wrote both
            (out / CHARTS_DIR / f"{stale}{suffix}").unlink(missing_ok=True)
    drawn, left_out = {}, {}
    for name, (title, fig) in figures.items():
        if isinstance(fig, charts.LeftOut):
            left_out[name] = f"{title}: left out, {fig.reason}"
        elif fig is not None:
            charts.mark_smoke(fig, findings.smoke_for(*CHART_PARTS[name]))
            svg = charts.save(fig, out / CHARTS_DIR, name)
            drawn[name] = Chart(name, title, CAPTIONS[name], f"{CHARTS_DIR}/{svg.name}")
    return drawn, left_out


def figures_or_reasons(drawn: dict[str, Chart], left_out: dict[str, str], *names: str) -> str:
    """The named charts that were drawn; for each promised one that was not, the line saying why."""
    return "".join(html.figure(drawn[n]) if n in drawn else html.missing(left_out[n]) if n in left_out else ""
                   for n in names)


def _run_suite(suite: str) -> str:
    return f"no {suite} results: run `attnbench run --suite {suite} --out RESULTS_DIR`"


def html_sections(results, findings: Findings, drawn: dict[str, Chart], comparison, before, paths,
                  left_out: dict[str, str] | None = None):
    def figs(*names):
        return figures_or_reasons(drawn, left_out or {}, *names)

    sections = [("overview", "Overview", _overview(results, findings)),
                ("environment", "Environment", _environment(results, before))]
    if findings.points.empty:
        ragged_only = _ragged(findings.ragged, figs("ragged"))
        sections.append(("throughput", "Throughput", ragged_only or html.missing(_run_suite("throughput"))))
    else:
        body = _conditions(results.rows) + figs("latency", "memory", "tflops", "tokens", "energy",
                                                "decode_state", "gqa_memory")
        body += _largest_html(findings.largest, findings.points)
        body += ("<h3>Scaling exponents</h3><p>k in time per sequence ~ N<sup>k</sup> (latency / batch: 2 "
                 "for quadratic attention, 1 for linear-time mixers), least squares on log-log over the "
                 "lengths at batch 1 where there are 3 (a shrinking batch also costs a CPU its parallelism), "
                 f"else those from N = {analysis.FIT_FROM_N}, else the larger half, "
                 "with the 95% t interval of the slope. <code>noisy_points</code>: fitted points whose "
                 "median's interval stayed wider than &plusmn;2%.</p>")
        body += html.table(findings.fits)
        body += ("<h3>Crossovers</h3><p>Judged against each median's 95% interval: a crossover needs a "
                 "length where the winner was measurably slower and, from then on, no length where it was "
                 "measurably slower, ending measurably faster.</p>")
        body += (html.table(crossings_table(findings.crossings),
                            fold=f"Every crossover, {len(findings.crossings)} (the decision page's matrices "
                                 "in full)") if findings.crossings
                 else "<p>No latency crossover beyond the noise.</p>")
        body += _compiled(findings.compiled, figs("compiled"))
        body += _ragged(findings.ragged, figs("ragged"))
        body += _timer_checks(results.rows) + _frontier(results.rows)
        sections.append(("throughput", "Throughput", body))
    quality = figs("exactness", "approximation")
    if not findings.exactness.empty:
        quality += html.table(exactness_table(findings.exactness))
    if findings.best.empty:
        quality += html.missing(_run_suite("accuracy") + " (and --suite long-range)")
    else:
        quality += figs("accuracy") + html.table(accuracy_table(findings.best))
        quality += figs("long_range", "passkey", "pareto")
        if findings.pareto is not None:
            quality += html.table(findings.pareto.points)
    sections.append(("quality", "Quality", quality))
    if comparison is not None:
        sections.append(("comparison", "Comparison", _comparison(comparison, drawn)))
    sections.append(("failures", "Cases that did not run", html.table(failures_table(results.rows))))
    return sections


def _ragged(frame: pd.DataFrame, chart: str) -> str:
    """The ragged-batch subsection: the chart and every point, with the code path each layout ran."""
    if frame.empty:
        return ""
    shown = frame.assign(padding=1 - frame.real_tokens / frame.padded_tokens)
    columns = ["device_name", "mode", "dtype", "seq_len", "lengths", "variant", "layout", "status",
               "tokens_per_s", "real_tokens", "padded_tokens", "padding", "ragged_path", "reason"]
    return ("<h3>Ragged batches</h3><p>The same drawn batch of lengths, padded (a padding mask over batch x "
            "N) and packed (the real tokens back to back, a document mask or one call per document); "
            "tokens/s count real tokens only. <code>padding</code>: the share of a padded batch that is "
            "padding.</p>"
            + chart + html.table(shown[columns]))


def _overview(results, findings: Findings) -> str:
    counts = data.status_counts(results.rows).reset_index()
    return html.table(counts)


def _largest_html(largest: pd.DataFrame, points: pd.DataFrame) -> str:
    """Largest feasible N per configuration and variant, folded; the variants unsupported in a
    configuration as one count per reason above it."""
    gone = largest[largest.first_failure == "unsupported"]
    shown = largest[largest.first_failure != "unsupported"]
    body = "<h3>Largest feasible N</h3>"
    if not gone.empty:
        reasons = unsupported_reasons(gone, points)
        body += (f"<p>{len(gone)} unsupported (configuration x variant), left out below: "
                 + "; ".join(f"{r.count} {html.esc(r.reason)} ({html.esc(r.variants)})"
                             for r in reasons.itertuples()) + ".</p>")
    return body + html.table(shown, fold=f"Largest feasible N: {len(shown)} rows (configuration x variant)")


def unsupported_reasons(gone: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """reason, count and variants of the (config, variant) pairs in `gone`, the reason from their points."""
    keyed = points[points.status == "unsupported"].drop_duplicates(["config", "series"])
    why = gone.merge(keyed[["config", "series", "reason"]], left_on=["config", "variant"],
                     right_on=["config", "series"], how="left").fillna({"reason": "no reason given"})
    grouped = why.groupby("reason")
    return pd.DataFrame({"reason": list(grouped.groups), "count": list(grouped.size()),
                         "variants": [", ".join(sorted(set(g.variant))) for _, g in grouped]})


def _environment(results, before) -> str:
    body = html.table(environment_table(results, before), fold="Environment of each run")
    for run, sources in merged_sources(results.environments).items():
        body += (f"<h3>Merged from</h3><p>{html.esc(run)} was merged from these runs (rows kept from "
                 "each):</p>" + html.table(sources))
    body += "<h3>Hardware</h3><p>Where the rows were measured, per run.</p>" + html.table(
        data.hardware(results.rows))
    for run, devices in data.mixed_devices(results.rows).items():
        body += html.missing(f"Mixed hardware: {run} holds rows from {len(devices)} devices "
                             f"({', '.join(devices)}); its timings are comparable per device only.")
    if (assumed := markdown.default_models_sentence(results.rows)) is not None:
        body += html.missing(assumed)
    return body


MERGED_FROM = "merged_from"  # environment.json of a merged run: one entry per source run


def merged_sources(environments: dict[str, dict]) -> dict[str, pd.DataFrame]:
    """run -> a table of the runs it was merged from (one row each), for the runs that were merged."""
    found = {}
    for run, env in environments.items():
        sources = env.get(MERGED_FROM)
        if isinstance(sources, list) and sources:
            table = pd.DataFrame([s if isinstance(s, dict) else {"run": s} for s in sources])
            first = [c for c in ("run", "rows_kept") if c in table]
            found[run] = table[first + [c for c in table.columns if c not in first]]
    return found


SHARED_CPU = 0.1  # others_cpu_share above which a timing is counted as taken on a shared machine


def _conditions(rows: pd.DataFrame) -> str:
    """How the throughput rows were measured: the matmul peaks, threads, governor, noisy points."""
    tp = data.throughput(rows)
    if tp.empty:
        return ""
    ok = tp[tp.status == "ok"]
    facts = []
    if "threads" in rows and rows.threads.notna().any():
        facts.append("threads " + ", ".join(f"{t:g}" for t in sorted(rows.threads.dropna().unique())))
    if "cpu_governor" in rows:
        governors = sorted(set(rows.cpu_governor.dropna()))
        governor = html.esc(", ".join(governors)) if governors else "not readable"
        facts.append(f"CPU frequency governor {governor}")
    if "others_cpu_share" in ok and ok.others_cpu_share.notna().any():
        shares = ok.others_cpu_share.dropna()
        facts.append(f"other processes used up to {shares.max():.0%} of the CPU while a case was timed "
                     f"({int((shares > SHARED_CPU).sum())} of {len(shares)} measurements above "
                     f"{SHARED_CPU:.0%}: a steady load slows every round alike and is not flagged noisy)")
    if ok.noisy.notna().any():
        facts.append(f"{int((ok.noisy > 0).sum())} of {len(ok)} measurements noisy (spread above "
                     "5% and the median's interval wider than &plusmn;2% after re-measuring)")
    body = f"<p>{'; '.join(facts)}.</p>" if facts else ""
    peaks = data.matmul_peaks(rows)
    if not peaks.empty:
        body += ("<p>% of peak compares each row with the measured matmul peak of its own precision:</p>"
                 + html.table(peaks))
    return body


def compiled_table(series: pd.DataFrame) -> pd.DataFrame:
    """Per (config, variant, N): eager and compiled median latency, eager / compiled, the compiling call's
    seconds, and the compiled series' status and reason where it did not run."""
    keys = ["config", "variant", "seq_len"]
    eager = series[~series.compiled & (series.status == "ok")][[*keys, "latency_ms"]]
    compiled = series[series.compiled][[*keys, "latency_ms", "compile_s", "status", "reason"]]
    table = compiled.merge(eager, on=keys, how="left", suffixes=("_compiled", "_eager"))
    table["speedup"] = table.latency_ms_eager / table.latency_ms_compiled
    columns = [*keys, "latency_ms_eager", "latency_ms_compiled", "speedup", "compile_s", "status", "reason"]
    return table[columns].rename(columns={"seq_len": "N", "status": "compiled_status"})


def _compiled(series: pd.DataFrame, figure: str) -> str:
    if series.empty:
        return ""
    return ("<h3>Compiled against eager</h3><p>Each variant's call under torch.compile (inductor, static "
            "shapes; <code>--compile</code>, docs/compile.md) beside the same call eager. The latency is "
            "the steady state after the compiling call; <code>compile_s</code> is that first call's wall "
            "time (tracing, code generation, the C++ or Triton build, one execution), never timed in the "
            "rounds. <code>speedup</code> = eager / compiled median latency.</p>"
            + figure + html.table(compiled_table(series)))


def _timer_checks(rows: pd.DataFrame) -> str:
    checks = data.fidelity(rows)
    if checks.empty:
        return ""
    return ("<h3>Timer fidelity</h3><p>Cases timed side by side by our loop and by an independent timer "
            "(alternated in short turns); <code>fidelity_ratio</code> = our median / theirs.</p>"
            + html.table(checks))


def _frontier(rows: pd.DataFrame) -> str:
    table = data.frontier(rows)
    if table.empty:
        return ""
    return ("<h3>Memory frontier</h3><p>The largest N one forward call ran at (batch 1), found by bisection "
            "under the memory cap, and the next length tried above it with why it failed; beside it, the "
            "memory model's predicted peak and predicted largest N under the same cap.</p>"
            + html.table(table))


def environment_table(results, before) -> pd.DataFrame:
    envs = {f"run: {k}": v for k, v in results.environments.items()}
    if before is not None:
        envs.update({f"baseline: {k}": v for k, v in before.environments.items()})
    keys = list(dict.fromkeys(k for env in envs.values() for k in env if k != MERGED_FROM))
    return pd.DataFrame({"": keys, **{name: [env.get(k) for k in keys] for name, env in envs.items()}})


def crossings_table(crossings: list[analysis.Crossing]) -> pd.DataFrame:
    return pd.DataFrame([{"config": c.config, "faster": c.faster, "slower": c.slower,
                          "from N ~": round(c.estimate), "slower at": c.slower_at,
                          "faster from": c.faster_from,
                          "within noise at": ", ".join(map(str, c.within_noise))} for c in crossings])


def exactness_table(exact: pd.DataFrame) -> pd.DataFrame:
    table = exact.pivot_table(index=["variant", "dtype"], columns="input_kind", values="rel_err",
                              aggfunc="max")
    table.columns = [f"rel_err ({c})" for c in table.columns]
    return table.reset_index()


def accuracy_table(best: pd.DataFrame) -> pd.DataFrame:
    table = data.task_accuracy(best).pivot(index="variant", columns="task", values="accuracy")
    lrs = best.groupby("variant").lr.agg(lambda s: ", ".join(f"{v:g}" for v in sorted(s.dropna().unique())))
    return table.assign(mean=table.mean(axis=1), best_lrs=lrs).reset_index()


def failures_table(rows: pd.DataFrame) -> pd.DataFrame:
    failed = rows[rows.status != "ok"]
    if failed.empty:
        return failed
    failed = data.with_columns(failed, ("reason",)).fillna({"reason": ""})
    grouped = failed.groupby(["suite", "variant", "status", "reason"])
    return grouped.size().rename("cases").reset_index().sort_values(["suite", "variant", "status"])


def _comparison(comparison: Comparison, drawn: dict[str, Chart]) -> str:
    n_reg, n_imp = len(comparison.regressions), len(comparison.improvements)
    body = (f"<p>Against <code>{html.esc(comparison.baseline)}</code>, threshold "
            f"{comparison.threshold:.0%}: <strong>{n_reg} regression{'s' * (n_reg != 1)}</strong>, "
            f"{n_imp} improvement{'s' * (n_imp != 1)}, {len(comparison.changes)} comparisons.</p>")
    if "ratio" in drawn:
        body += html.figure(drawn["ratio"])
    flagged = comparison.changes[comparison.changes.verdict != "within threshold"]
    body += "<h3>Changes beyond the threshold</h3>" + html.table(_percent(flagged), row_class="verdict")
    body += ("<details><summary>Every comparison, side by side</summary>"
             + html.table(_percent(comparison.changes), row_class="verdict") + "</details>")
    return body


def _percent(changes: pd.DataFrame) -> pd.DataFrame:
    shown = changes.copy()
    shown["change"] = [("" if pd.isna(c) else f"{c:+.3f}" if w == "accuracy" else f"{c:+.1%}")
                       for c, w in zip(changes.change, changes.what, strict=True)]
    return shown
