"""Charts of a results set. Each function returns a matplotlib Figure, or None when the data has nothing
to draw, so that tests can inspect what was drawn and the report can skip what is missing; a chart the
report promises (the GQA memory and serving profile charts) returns `LeftOut(reason)` instead, and the
report prints the reason where the chart would be.

Figures are built on `matplotlib.figure.Figure` (Agg canvas, no pyplot state) and drawn with seaborn.
Artists carry gids that say what they are: `series:<name>` for a data line, `oom:<name>` for the
lengths where a series ran out of memory, `max-n:<name>` for its largest feasible length,
`noisy:<name>` for its points whose median's interval stayed wider than +-2%, `device-memory`,
`pareto-front`, `predicted:<name>` for a series' memory model beside its measured peak; the
compiled-vs-eager chart's lines `eager:<variant>` and `compiled:<variant>`, and `not-compiled:<variant>`
where the compiled series did not run (unsupported, failed).
"""

from __future__ import annotations

import contextlib
import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")


import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    EngFormatter,
    FixedLocator,
    FuncFormatter,
    LogFormatter,
    NullLocator,
)
from matplotlib.transforms import Bbox  # noqa: E402

from harness import store  # noqa: E402
from harness.report import colors as colors_  # noqa: E402
from harness.report import data, serving  # noqa: E402
from harness.report.analysis import Pareto  # noqa: E402

PANEL_SIZE = (4.2, 3.1)  # inches per facet
LEGEND_WIDTH = 2.2
MAX_COLUMNS = 3
AXES_SHARE = 0.8  # of a panel's width, what its axes (and so its title) span beside the y labels
# DejaVu Sans, the charts' font, averages about 0.6 em a character (digits 0.64); bold a little more.
CHAR_EM = {"normal": 0.62, "bold": 0.7}
MIN_LABEL_GAP_LOG2 = 0.6
SMOKE_LABEL = "smoke run"
BAR_GROUP_WIDTH = 0.8  # seaborn's default: the bars of one x position share this width


@contextlib.contextmanager
def _style():
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.8):
        yield


class Palette(dict):
    """name -> colour (a dict, as matplotlib takes it), with each name's line style and family
    (harness.report.colors: a hue per family, a shade and line style per variant, fixed by the names)."""

    def __init__(self, families: dict[str, str]):
        found = colors_.looks(families)
        super().__init__({name: look.color for name, look in found.items()})
        self.linestyle = {name: look.linestyle for name, look in found.items()}
        self.family = {name: look.family for name, look in found.items()}

    def ordered(self, names) -> list[str]:
        """`names` grouped by family in the legend's fixed order, by name within a family."""
        rank = {f: i for i, f in enumerate(colors_.family_order(set(self.family.values())))}
        return sorted(names, key=lambda n: (rank.get(self.family.get(n), len(rank)), n))


def family_guess(name: str) -> str:
    """A name's family where the data gives none: its first word before '-' (data.fill_family's rule)."""
    return str(name).split(" ")[0].split("-")[0]


def palette(names) -> Palette:
    """The colours of `names`: a mapping name -> family, or names alone (family guessed from the name)."""
    families = dict(names) if isinstance(names, dict) else {n: family_guess(n) for n in set(names)}
    return Palette(families)


def series_families(frame: pd.DataFrame, name: str = "series") -> dict[str, str]:
    """name -> family of the rows in `frame` (a guess from the name where a row has no family)."""
    family = frame.family if "family" in frame else pd.Series(np.nan, index=frame.index)
    return {n: (f if isinstance(f, str) and f else family_guess(n)) for n, f in zip(frame[name], family,
                                                                                    strict=True)}


def _colors_for(frame: pd.DataFrame, given, name: str = "series") -> Palette:
    """The report's palette when it covers every name of `frame`, else one made from the frame."""
    if isinstance(given, Palette) and set(frame[name]) <= set(given):
        return given
    return palette(series_families(frame, name))


class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.5, 2, 300; 2 M with `engineering`); the log formatter picks
    which ticks to label."""

    def __init__(self, engineering: bool = False, **kwargs):
        super().__init__(labelOnlyBase=False, **kwargs)
        self.plain = EngFormatter(sep=" ") if engineering else (lambda x: f"{x:g}")

    def __call__(self, x, pos=None):
        return self.plain(x) if super().__call__(x, pos) else ""


def _log_scale(ax, which: str = "y", engineering: bool = False) -> None:
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_formatter(PlainLogFormatter(engineering))
    axis.set_minor_formatter(PlainLogFormatter(engineering, minor_thresholds=(1.5, 0.5)))


def length_label(n: float) -> str:
    return f"{n / 1024:g}k" if n >= 1024 and n % 1024 == 0 else f"{n:g}"


def _length_axis(ax, lengths) -> None:
    """A log2 axis with a tick at each measured length and nowhere else; a label where it has room (two
    lengths closer than 2^0.6 keep one label)."""
    ax.set_xscale("log", base=2)
    ticks = sorted({float(n) for n in lengths})
    labelled, last = set(), None
    for n in ticks:
        if last is None or np.log2(n / last) >= MIN_LABEL_GAP_LOG2:
            labelled.add(n)
            last = n
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: length_label(v) if v in labelled else ""))
    ax.set_xlabel("sequence length N")


def _grid(panels: list[tuple[str, str]], title: str, legend: bool = True):
    """A figure with one axes per (row label, column label) panel, wrapped three to a line."""
    cols = min(MAX_COLUMNS, len(panels))
    rows = -(-len(panels) // cols)
    width = PANEL_SIZE[0] * cols + (LEGEND_WIDTH if legend else 0)
    fig = Figure(figsize=(width, PANEL_SIZE[1] * rows + 0.5), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False)
    for ax in list(grid.flat)[len(panels):]:
        ax.set_visible(False)
    axes = dict(zip(panels, grid.flat, strict=False))
    for (row, col), ax in axes.items():
        ax.set_title(wrapped(f"{col}\n{row}", PANEL_SIZE[0] * AXES_SHARE, "medium"), fontsize="medium")
    suptitle(fig, title, legend)
    return fig, axes


def wrapped(text: str, width_in: float, size: str | float, weight: str = "normal") -> str:
    """`text` broken at spaces so that no line is wider than `width_in` inches at font size `size` (a
    configuration label is longer than a panel is wide: it ran into its neighbour's)."""
    points = FontProperties(size=size).get_size_in_points()
    chars = max(12, int(width_in * 72 / (points * CHAR_EM[weight])))
    return "\n".join(textwrap.fill(line, chars, break_long_words=False) for line in text.split("\n"))


def suptitle(fig: Figure, title: str, legend: bool, note: str = "") -> None:
    """The figure's title centred over its panels and wrapped to their width, clear of the legend that
    stands outside them on the right (a title centred over the whole figure ran into it); `note`, a
    line of its own under it, is kept whole so that a reader (and a search) finds it as written."""
    width = fig.get_figwidth() - (LEGEND_WIDTH if legend else 0.0)
    size = matplotlib.rcParams["figure.titlesize"]
    text = wrapped(title, width * 0.95, size, "bold") + (f"\n{note}" if note else "")
    fig.suptitle(text, x=width / 2 / fig.get_figwidth(), fontweight="bold")


def _legend(fig, colors: Palette, drawn: set[str], markers: dict[str, str]) -> None:
    """One entry per drawn series, families in their fixed order, then the markers' meanings."""
    handles = [Line2D([], [], color=colors[s], linestyle=colors.linestyle.get(s, "-"), marker="o", label=s)
               for s in colors.ordered(drawn)]
    handles += [Line2D([], [], color="0.2", linestyle="none", markersize=9, label=label,
                       **(m if isinstance(m, dict) else {"marker": m})) for label, m in markers.items()]
    if handles:
        fig.legend(handles=handles, loc="outside right upper", frameon=False)


def _panels(frame: pd.DataFrame) -> list[tuple[str, str]]:
    order = {name: i for i, name in enumerate(data.MODE_NAMES.values())}
    cols = sorted(frame.panel_col.unique(), key=lambda c: (order.get(c, len(order)), c))
    return [(r, c) for c in cols for r in sorted(frame.panel_row.unique())
            if ((frame.panel_row == r) & (frame.panel_col == c)).any()]


def metric_vs_length(points: pd.DataFrame, metric: str, ylabel: str, title: str, scale: float = 1.0,
                     log_y: bool = True, largest: dict | None = None, band: tuple[str, str] | None = None,
                     decorate=None, colors: dict | None = None, engineering: bool = False,
                     timed: bool = False, markers: dict | None = None):
    """One panel per configuration, one line per series; lengths that ran out of memory marked with X.

    `largest` maps (config, series) to the largest feasible N (analysis.largest_feasible): a star marks
    it. `decorate(ax, panel_points)`, when given, adds what a chart draws beside its lines. `timed`: the
    metric comes from the latency, so noisy points are ringed. `markers`: legend entries (label -> marker)
    of what `decorate` draws.
    """
    drawable = points[(points.status == "ok") & points[metric].notna()]
    if drawable.empty:
        return None
    colors = _colors_for(points, colors)
    points = _split_crowded(points)
    # Out-of-memory marks go on the charts of a metric the series reports (no OOM mark on the TFLOP/s
    # chart for a kernel without a FLOP count), or on every chart when it never ran at all.
    ran = set(points.series[points.status == "ok"])
    marked = set(drawable.series) | (set(points.series) - ran)
    with _style():
        fig, axes = _grid(_panels(points[points.series.isin(drawable.series) & points[metric].notna()]),
                          title)
        drawn: set[str] = set()
        any_oom = any_star = False
        for (row, col), ax in axes.items():
            panel = points[(points.panel_row == row) & (points.panel_col == col)]
            lengths: set[int] = set(_draw_context(ax, points, panel, metric, scale))
            for series, group in panel.groupby("series", sort=True):
                line = group[(group.status == "ok") & group[metric].notna()].sort_values("seq_len")
                if not line.empty:
                    star = (largest or {}).get((line.config.iloc[0], series))
                    any_star |= _draw_line(ax, line, metric, scale, series, colors[series], band, star, timed,
                                           colors.linestyle.get(series, "-"))
                    drawn.add(series)
                    lengths.update(line.seq_len)
                oom = group[group.status == "oom"].seq_len
                if not oom.empty and series in marked:
                    any_oom = True
                    drawn.add(series)
                    lengths.update(oom)
                    # At the top of the panel, in the series' colour: there is no value to plot.
                    ax.plot(oom, np.full(len(oom), 0.96), transform=ax.get_xaxis_transform(),
                            marker="X", markersize=9, linestyle="none", color=colors[series],
                            markeredgecolor="black", clip_on=False, gid=f"oom:{series}")
            _length_axis(ax, lengths)
            if log_y:
                _log_scale(ax, "y", engineering)
            ax.set_ylabel(ylabel)
            if decorate is not None:
                decorate(ax, panel)
        markers = {**({"out of memory": "X"} if any_oom else {}), **(markers or {})}
        if any_star:
            markers["largest feasible N"] = "*"
        if timed and "noisy" in drawable and (drawable.noisy > 0).any():
            markers[NOISY_LABEL] = {"marker": "o", "markerfacecolor": "none", "markeredgewidth": 1.2}
        _legend(fig, colors, drawn, markers)
    return fig


NOISY_LABEL = "noisy (interval wider than +-2%)"
MAX_SERIES_PER_PANEL = 8  # above this a configuration's panel splits into highlighted subsets
SUBSETS = {True: "exact kernels", False: "approximations, other mixers"}


def _split_crowded(points: pd.DataFrame) -> pd.DataFrame:
    """Where a panel would hold more than MAX_SERIES_PER_PANEL series, one panel per subset (exact
    kernels; the rest), each highlighting its subset over the others in grey; `context_row` keeps the
    configuration's row label."""
    points = points.assign(context_row=points.panel_row)
    counts = points[points.status == "ok"].groupby(["panel_row", "panel_col"]).series.nunique()
    crowded = set(counts[counts > MAX_SERIES_PER_PANEL].index)
    if not crowded:
        return points
    exact = points.exact.map(lambda v: v is True or v == 1.0) if "exact" in points else False
    subset = pd.Series(exact, index=points.index).map(SUBSETS)
    split = pd.Series([key in crowded for key in zip(points.panel_row, points.panel_col, strict=True)],
                      index=points.index)
    return points.assign(panel_row=points.panel_row.where(~split, points.panel_row + "\n" + subset))


def _draw_context(ax, points, panel, metric, scale) -> set[int]:
    """In a subset's panel, the configuration's other series as thin grey lines (no legend entry)."""
    if panel.empty or (panel.panel_row == panel.context_row).all():
        return set()
    first = panel.iloc[0]
    same = (points.context_row == first.context_row) & (points.panel_col == first.panel_col)
    drawable = (points.status == "ok") & points[metric].notna()
    others = points[same & drawable & ~points.series.isin(panel.series)]
    for series, line in others.groupby("series", sort=True):
        line = line.sort_values("seq_len")
        ax.plot(line.seq_len, line[metric].to_numpy(float) * scale, color="0.82", linewidth=0.9, zorder=1,
                gid=f"context:{series}")
    return set(int(n) for n in others.seq_len)



def _draw_line(ax, line, metric, scale, series, color, band, star: int | None, timed: bool = False,
               linestyle: str = "-") -> bool:
    """The series' line (and percentile band); a star at its largest feasible N (True when starred); when
    `timed`, a ring around each noisy point."""
    x, y = line.seq_len.to_numpy(), line[metric].to_numpy(float) * scale
    ax.plot(x, y, color=color, linestyle=linestyle, marker="o", markersize=5, label=series,
            gid=f"series:{series}")
    noisy = (line.noisy > 0).to_numpy() if timed and "noisy" in line else np.zeros(len(line), bool)
    if noisy.any():  # a wide ring around the point: its median is uncertain
        ax.plot(x[noisy], y[noisy], marker="o", markersize=11, markerfacecolor="none", linestyle="none",
                markeredgecolor="0.2", markeredgewidth=1.2, gid=f"noisy:{series}")
    if band and line[list(band)].notna().all().all():
        ax.fill_between(x, line[band[0]].to_numpy(float) * scale, line[band[1]].to_numpy(float) * scale,
                        color=color, alpha=0.15, linewidth=0)
    if star is None or pd.isna(star) or star not in x:
        return False
    ax.plot([star], y[x == star][:1], marker="*", markersize=14, color=color, markeredgecolor="black",
            linestyle="none", gid=f"max-n:{series}")
    return True


def latency_chart(points, colors=None, largest: pd.DataFrame | None = None):
    """Latency per configuration; `largest` (analysis.largest_feasible) puts a star where a sweep found
    its largest feasible N."""
    found = largest[largest.largest_feasible_n.notna()] if largest is not None else largest
    stars = {} if found is None else {(r.config, r.variant): r.largest_feasible_n for r in found.itertuples()}
    return metric_vs_length(points, "latency_ms", "latency (ms, median)", "Latency vs sequence length",
                            largest=stars, band=("latency_ms_p20", "latency_ms_p80"), colors=colors,
                            timed=True)


PREDICTED_LABEL = "predicted (memory model)"
PREDICTED_MARKER = "x"


def memory_chart(points, colors=None):
    """Measured peak memory per series; beside it, where the rows carry one (`mem_predicted_bytes`:
    kernel-level forward rows), the memory model's prediction as a thin dotted line of x marks in the
    series' colour (gid `predicted:<series>`). Left out (LeftOut) when no row has a measured peak: a
    prediction alone is not drawn as if it were the measurement."""
    if points.empty or not ((points.status == "ok") & points.mem_peak_bytes.notna()).any():
        return LeftOut("no row holds a measured peak the method can vouch for (a CPU row's mem_reason says "
                       "why); the memory model's predictions are not drawn without it")
    palette_ = _colors_for(points, colors)
    predicted_any = "mem_predicted_bytes" in points and bool(
        ((points.status == "ok") & points.mem_predicted_bytes.notna()).any())

    def decorate(ax, panel):
        total = panel.device_mem_total_bytes.median() / data.GIB
        if np.isfinite(total):
            ax.axhline(total, color="0.25", linestyle="--", linewidth=1.2, gid="device-memory")
            ax.annotate(f"device memory {total:.0f} GiB", (0.02, total), xycoords=ax.get_yaxis_transform(),
                        va="bottom", fontsize="small", color="0.25")
        if predicted_any:
            _draw_predicted(ax, panel, palette_)

    title = "Peak memory vs sequence length" + (": measured and predicted" if predicted_any else "")
    return metric_vs_length(points, "mem_peak_bytes", "peak memory (GiB)", title, scale=1 / data.GIB,
                            decorate=decorate, colors=palette_,
                            markers={PREDICTED_LABEL: PREDICTED_MARKER} if predicted_any else None)


def _draw_predicted(ax, panel, colors) -> None:
    """Each series' predicted peak in its panel, where its ok rows carry one."""
    rows = panel[(panel.status == "ok") & panel.mem_predicted_bytes.notna()]
    for series, line in rows.groupby("series", sort=True):
        line = line.sort_values("seq_len")
        ax.plot(line.seq_len, line.mem_predicted_bytes.to_numpy(float) / data.GIB, color=colors[series],
                linestyle=":", linewidth=1.0, marker=PREDICTED_MARKER, markersize=6,
                gid=f"predicted:{series}")


def tflops_chart(points, colors=None):
    """Achieved TFLOP/s of the softmax kernels, with the right axis in % of the measured matmul peak."""
    def percent_of_peak(ax, panel):
        ax.set_ylim(bottom=0)
        peak = panel.peak_matmul_tflops.median()
        if np.isfinite(peak) and peak > 0:
            right = ax.secondary_yaxis("right", functions=(lambda t: 100 * t / peak,
                                                          lambda pct: pct * peak / 100))
            right.set_ylabel(f"% of matmul peak ({peak:.3g} TFLOP/s)")

    return metric_vs_length(points, "tflops", "TFLOP/s", "Achieved TFLOP/s (softmax kernels)", log_y=False,
                            decorate=percent_of_peak, colors=colors, timed=True)


def tokens_chart(points, colors=None):
    return metric_vs_length(points, "tokens_per_s", "tokens / s", "Throughput vs sequence length",
                            colors=colors, engineering=True, timed=True)


def decode_state_chart(points, colors=None):
    """Bytes of decoding state per sequence against the context length (decode rows)."""
    decode = points[points["mode"] == "decode"]
    return metric_vs_length(decode, "decode_state_bytes_per_seq", "state per sequence (bytes)",
                            "Decode state per sequence vs context length", colors=colors, engineering=True)


@dataclass(frozen=True)
class LeftOut:
    """A promised chart the rows cannot draw, and why (the report prints the reason in its place)."""

    reason: str


def gqa_memory_chart(points, colors=None):
    """Decode state per sequence (the KV cache, or a recurrent state) against the KV heads, one line per
    series in its family's colour, at the longest context each level decoded at more than one KV head
    count (kv_heads null: the row's n_heads). A series measured at one KV head count (a mixer with no KV
    heads) is a single point."""
    decode = points[(points["mode"] == "decode") & (points.status == "ok")] if not points.empty else points
    if decode.empty:
        return LeftOut("no decode rows: run `attnbench run --suite throughput --kv-heads 1 --kv-heads 4`")
    decode = decode.assign(kv=serving.kv_heads_of(decode), state=serving.state_per_sequence(decode))
    decode = decode[decode.state.notna() & decode.kv.notna()]
    panels = []
    model_of = decode.model.astype(object).where(decode.model.notna(), "")
    for (level, dtype, model), rows in decode.groupby(["level", "dtype", model_of]):
        counts = rows.groupby("seq_len").kv.nunique()
        if (counts > 1).any():
            n = int(counts[counts > 1].index.max())
            panels.append((f"{level} level, {dtype}" + (f", model {model}" if model else ""), n,
                           rows[rows.seq_len == n]))
    if not panels:
        return LeftOut("no decode rows at more than one KV head count: run `attnbench run --suite throughput "
                       "--mode decode --kv-heads 1 --kv-heads 4` (each must divide n_heads)")
    colors = _colors_for(decode, colors)
    with _style():
        fig, axes = _grid([(row, f"decode state at N = {length_label(n)}") for row, n, _ in panels],
                          "Decode state per sequence vs KV heads")
        drawn: set[str] = set()
        for (_, _, rows), ax in zip(panels, axes.values(), strict=True):
            for series, line in rows.groupby("series", sort=True):
                line = line.groupby("kv").state.median().sort_index()
                ax.plot(line.index, line.to_numpy(float), color=colors[series], marker="o", markersize=5,
                        linestyle=colors.linestyle.get(series, "-"), gid=f"series:{series}")
                drawn.add(series)
            ax.set_xscale("log", base=2)
            ticks = sorted(set(rows.kv.astype(int)))
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel("KV heads")
            _log_scale(ax, "y", engineering=True)
            ax.set_ylabel("state per sequence (bytes)")
        _legend(fig, colors, drawn, {})
    return fig


SERVING_PANELS = (("ttft_ms", "time to first token (ms)"),
                  ("tokens_per_s_per_user", "decode tokens/s per user"),
                  ("state_bytes", "memory per sequence (bytes)"))


def serving_profile_chart(points, colors=None):
    """The serving profile at the contexts measured, per series in its family's colour: time to first
    token (a prompt's forward: latency / batch), decode tokens/s per user (1000 / one sequence's step
    time: latency / batch) and the decode state per sequence, each one layer's figure x the model's
    layers (`model_layers`) for a model preset's rows. One row of panels per model preset measured, else
    the grid's shape (per layer). Causal rows, at the level and dtype `recommend` reads (serving.rows_for)."""
    if points.empty:
        return LeftOut("no throughput rows")
    shapes = sorted(points.model.dropna().unique()) + ([None] if points.model.isna().any() else [])
    rows_of = {}
    for model in shapes:
        own = points[points.model == model] if model else points[points.model.isna()]
        _, dtype, level = serving.rows_for(own, causal=True, dtype=None)  # the level and dtype it reads
        ok = own[(own.status == "ok") & own.causal & (own.dtype == dtype) & (own.level == level)
                 & own["mode"].isin(("fwd", "decode"))]
        if (ok["mode"] == "fwd").any() and (ok["mode"] == "decode").any():
            rows_of[model] = (_serving_figures(ok), dtype, level)
    if not rows_of:
        return LeftOut("no causal forward and decode rows at one level and dtype: run `attnbench run --suite "
                       "throughput --mode fwd --mode decode` (or --model 1b for a model's shape)")
    figures = pd.concat([f for f, _, _ in rows_of.values()], ignore_index=True)
    colors = _colors_for(figures, colors)
    labels = {}
    for model, (frame, dtype, level) in rows_of.items():
        layers, heads = frame.layers.iloc[0], int(frame.n_heads.iloc[0])
        shape = f"{heads} head{'s' * (heads != 1)} x {int(frame.head_dim.iloc[0])}"
        labels[model] = (f"model {model}: {shape}, x {layers:g} layers" if model else
                         f"one layer of {shape}") + f"\n{level} level, {dtype}"
    # a panel for each figure the rows give (decode rows without a state's bytes give no memory panel)
    panels = [(labels[m], title) for m, (frame, _, _) in rows_of.items() for column, title in SERVING_PANELS
              if frame[column].notna().any()]
    with _style():
        fig, axes = _grid(panels, "Serving profile: prefill, decode and memory per sequence")
        drawn: set[str] = set()
        for model, (frame, _, _) in rows_of.items():
            for column, title in SERVING_PANELS:
                ax = axes.get((labels[model], title))
                if ax is None:
                    continue
                for series, line in frame[frame[column].notna()].groupby("series", sort=True):
                    line = line.groupby("seq_len")[column].median().sort_index()
                    ax.plot(line.index, line.to_numpy(float), color=colors[series], marker="o", markersize=5,
                            linestyle=colors.linestyle.get(series, "-"), gid=f"series:{series}:{column}")
                    drawn.add(series)
                _length_axis(ax, frame.seq_len[frame[column].notna()])
                ax.set_xlabel("context N")
                _log_scale(ax, "y", engineering=column != "ttft_ms")
                ax.set_ylabel(title)
        _legend(fig, colors, drawn, {})
    return fig


def _serving_figures(ok: pd.DataFrame) -> pd.DataFrame:
    """Per row of `ok` (forward and decode rows): the serving figure it gives, x the model's layers."""
    layers = (pd.to_numeric(ok["model_layers"], errors="coerce").fillna(1) if "model_layers" in ok
              else pd.Series(1.0, index=ok.index))
    per_seq = pd.to_numeric(ok.latency_ms, errors="coerce") / ok.batch.fillna(1).clip(lower=1) * layers
    forward, decode = ok["mode"] == "fwd", ok["mode"] == "decode"
    return pd.DataFrame({"series": ok.series, "family": ok.family, "seq_len": ok.seq_len,
                         "n_heads": ok.n_heads, "head_dim": ok.head_dim, "layers": layers,
                         "ttft_ms": per_seq.where(forward),
                         "tokens_per_s_per_user": (1e3 / per_seq).where(decode),
                         "state_bytes": (serving.state_per_sequence(ok) * layers).where(decode)})


def energy_chart(points, colors=None):
    return metric_vs_length(points, "energy_j_per_token", "energy (J / token)", "Energy per token",
                            colors=colors)


def accuracy_chart(task_accuracy: pd.DataFrame, colors=None):
    """Best-LR accuracy per task, one bar per variant."""
    if task_accuracy.empty:
        return None
    colors = colors or palette(task_accuracy.variant)
    with _style():
        tasks = sorted(task_accuracy.task.unique())
        fig = Figure(figsize=(max(5.0, 1.6 * len(tasks) + LEGEND_WIDTH), 3.6), layout="constrained")
        ax = fig.subplots()
        names = sorted(task_accuracy.variant.unique())
        sns.barplot(data=task_accuracy, x="task", y="accuracy", hue="variant", order=tasks, hue_order=names,
                    palette={v: colors[v] for v in names}, legend=False, ax=ax)
        for bars, variant in zip(ax.containers, names, strict=True):  # one container per hue level, in order
            bars.set_label(variant)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy (best learning rate)")
        # One entry per variant, built here: seaborn's own legend and the labelled containers would both
        # list every variant.
        handles = [Patch(color=colors[v], label=v) for v in names]
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
        suptitle(fig, "Accuracy by task and variant", legend=True)
    return fig


def long_range_chart(best: pd.DataFrame, colors=None):
    """Accuracy vs evaluation length, per task that was evaluated at more than one length."""
    if best.empty:
        return None
    curves = best.groupby(["task", "variant", "seq_len"]).accuracy.mean().reset_index()
    tasks = [t for t, g in curves.groupby("task") if g.seq_len.nunique() > 1]
    if not tasks:
        return None
    colors = colors or palette(curves.variant)
    curves = curves.assign(panel_row="accuracy vs length", panel_col=curves.task, series=curves.variant)
    with _style():
        fig, axes = _grid([("accuracy vs length", t) for t in tasks], "Long-range accuracy vs length")
        for (_, task), ax in axes.items():
            for variant, line in curves[curves.task == task].groupby("variant"):
                line = line.sort_values("seq_len")
                ax.plot(line.seq_len, line.accuracy, marker="o", markersize=5, color=colors[variant],
                        label=variant, gid=f"series:{variant}")
            _length_axis(ax, curves[curves.task == task].seq_len)
            ax.set_ylim(-0.02, 1.05)
            ax.set_ylabel("accuracy (best learning rate)")
        _legend(fig, colors, set(curves.variant), {})
    return fig


def passkey_chart(best: pd.DataFrame):
    """One heatmap per variant: passkey accuracy by context length (x) and depth of the key (y)."""
    passkey = best[(best.task == "passkey") & best.depth.notna()] if not best.empty else best
    if passkey.empty:
        return None
    names = sorted(passkey.variant.unique())
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    with _style():
        fig = Figure(figsize=(3.6 * cols + 0.8, 2.9 * rows + 0.5), layout="constrained")
        grid = fig.subplots(rows, cols, squeeze=False)
        for ax, variant in zip(grid.flat, names, strict=False):
            cells = passkey[passkey.variant == variant].pivot_table(
                index="depth", columns="seq_len", values="accuracy", aggfunc="mean")
            sns.heatmap(cells, vmin=0, vmax=1, cmap="viridis", annot=True, fmt=".2f", cbar=False, ax=ax,
                        linewidths=0.5)
            ax.set_title(variant)
            ax.set_xlabel("context length N")
            ax.set_ylabel("depth of the key")
            ax.set_gid(f"passkey:{variant}")
        for ax in list(grid.flat)[len(names):]:
            ax.set_visible(False)
        fig.colorbar(grid.flat[0].collections[0], ax=grid, label="accuracy", shrink=0.8)
        suptitle(fig, "Passkey retrieval: accuracy by length and depth", legend=False)
    return fig


def pareto_chart(front: Pareto | None, colors=None):
    """Quality against throughput at one length; the front joins the variants nothing beats on both."""
    if front is None or front.points.empty:
        return None
    table = front.points
    colors = colors or palette(table.variant)
    with _style():
        fig = Figure(figsize=(6.4, 4.2), layout="constrained")
        ax = fig.subplots()
        for p in table.itertuples():
            ax.scatter([p.tokens_per_s], [p.accuracy], s=70 if p.on_front else 40, color=colors[p.variant],
                       edgecolor="black" if p.on_front else "none", zorder=3, gid=f"point:{p.variant}")
        on = table[table.on_front].sort_values("tokens_per_s")
        ax.plot(on.tokens_per_s, on.accuracy, color="0.3", linestyle="--", zorder=2, gid="pareto-front")
        _log_scale(ax, "x", engineering=True)
        ax.margins(x=0.12, y=0.12)  # room for the labels of the outermost points
        ax.set_xlabel(f"tokens / s at N = {front.seq_len} ({front.config})")
        ax.set_ylabel("mean accuracy (best LR)\n" + ", ".join(front.tasks))
        suptitle(fig, f"Quality vs throughput at N = {front.seq_len}", legend=False)
        place_labels(fig, ax, [(p.tokens_per_s, p.accuracy, p.variant) for p in table.itertuples()])
    return fig


# Where a point's label may go, nearest first: (direction x, direction y, horizontal, vertical alignment).
_AROUND = ((1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
           (-1, -1, "right", "top"), (1, 0, "left", "center"), (-1, 0, "right", "center"),
           (0, 1, "center", "bottom"), (0, -1, "center", "top"))
_LABEL_DISTANCES = (4, 10, 18, 28, 40)  # points
_MARKER_HALF = 8  # points: a label keeps this far off every marker (and so reads as its own point's)


def place_labels(fig, ax, points: list[tuple[float, float, str]]) -> None:
    """Name each point beside it, where the label overlaps no other label, no marker and stays inside
    the axes: the first free spot of a few around the point, nearest first (a leader line joins a label
    put further away). Run after the axes' limits and the figure's layout are final."""
    renderer = FigureCanvasAgg(fig).get_renderer()  # measures text as the saved PNG will show it
    fig.draw_without_rendering()  # the constrained layout: the axes' final size and limits
    frame = ax.get_window_extent(renderer)
    pad = _MARKER_HALF * fig.dpi / 72
    taken = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad)
             for px, py in ax.transData.transform([(x, y) for x, y, _ in points])]
    for x, y, text in sorted(points, key=lambda p: (-p[1], p[0])):
        best = None
        for distance in _LABEL_DISTANCES:
            for dx, dy, ha, va in _AROUND:
                label = ax.annotate(text, (x, y), xytext=(dx * distance, dy * distance),
                                    textcoords="offset points", ha=ha, va=va, fontsize="small",
                                    annotation_clip=False, in_layout=False)
                box = label.get_window_extent(renderer)
                clash = sum(box.overlaps(other) for other in taken) + (not _inside(box, frame))
                if best is None or clash < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (clash, label, box, distance)
                else:
                    label.remove()
                if clash == 0:
                    break
            if best[0] == 0:
                break
        _, label, box, distance = best
        if distance > _LABEL_DISTANCES[0]:  # away from its point: a leader line says whose label it is
            offset, ha, va = label.xyann, label.get_ha(), label.get_va()
            label.remove()
            ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va,
                        fontsize="small", annotation_clip=False, in_layout=False,
                        arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": 4})
        taken.append(box)


def _inside(box, frame) -> bool:
    return box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1


def exactness_chart(exact: pd.DataFrame, title: str = "Implementation error against the float64 reference"):
    """`rel_err` per variant and input kind (log scale): the implementation error, or with the
    approximations' rows the approximation error (`title` says which). A pair that was not measured
    (mamba takes no q, k for the peaked and near-duplicate inputs) says "n/a" where its bar would be, and
    an error of exactly 0 says "0": neither has a height on a log axis."""
    if exact.empty or exact.rel_err.isna().all():
        return None
    worst = exact.groupby(["variant", "input_kind"]).rel_err.max().reset_index()
    variants, kinds = sorted(worst.variant.unique()), sorted(worst.input_kind.unique())
    with _style():
        fig = Figure(figsize=(max(5.5, 0.9 * len(variants) + LEGEND_WIDTH), 3.6), layout="constrained")
        ax = fig.subplots()
        sns.barplot(data=worst, x="variant", y="rel_err", hue="input_kind", order=variants, hue_order=kinds,
                    ax=ax)
        _log_scale(ax)
        width = BAR_GROUP_WIDTH / len(kinds)
        value = worst.set_index(["variant", "input_kind"]).rel_err
        for i, variant in enumerate(variants):
            for j, kind in enumerate(kinds):
                err = value.get((variant, kind), np.nan)
                if np.isfinite(err) and err > 0:
                    continue
                x = i - BAR_GROUP_WIDTH / 2 + (j + 0.5) * width
                ax.text(x, 0.02, "n/a" if not np.isfinite(err) else "0", transform=ax.get_xaxis_transform(),
                        rotation=90, ha="center", va="bottom", fontsize="x-small", color="0.35")
        ax.set_ylabel("relative error (worst case)")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(title="input", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        suptitle(fig, title, legend=False)
    return fig


# eager or compiled -> (label, line style, marker face): a hollow marker tells a lone compiled point apart
COMPILED_STYLE = {False: ("eager", "-", None), True: ("compiled", "--", "none")}


def compiled_chart(series: pd.DataFrame, colors=None):
    """Median latency of each variant eager (solid, filled markers) and under torch.compile (dashed, hollow
    markers, the same colour), one panel per family and configuration (data.compiled_series); an x at the
    top of a panel where the compiled series did not run at that N. None when no compiled row ran."""
    if series.empty or not ((series.status == "ok") & series.compiled).any():
        return None
    colors = _colors_for(series, colors, "variant")
    found = {(r.config, r.family) for r in series.itertuples() if isinstance(r.family, str)}
    rank = {f: i for i, f in enumerate(colors_.family_order({family for _, family in found}))}
    panels = sorted(found, key=lambda panel: (panel[0], rank[panel[1]]))
    with _style():
        fig, axes = _grid(panels, "Compiled against eager: latency per family")
        for (config, family), ax in axes.items():
            panel = series[(series.config == config) & (series.family == family)]
            for (variant, compiled), line in panel.groupby(["variant", "compiled"], sort=True):
                label, style, face = COMPILED_STYLE[bool(compiled)]
                ok = line[line.status == "ok"].sort_values("seq_len")
                if not ok.empty:
                    ax.plot(ok.seq_len, ok.latency_ms, color=colors[variant], linestyle=style, marker="o",
                            markersize=6, markerfacecolor=face or colors[variant], markeredgewidth=1.5,
                            label=f"{variant} {label}", gid=f"{label}:{variant}")
                failed = line[line.status != "ok"].seq_len
                if compiled and not failed.empty:  # at the top of the panel: there is no value to plot
                    ax.plot(failed, np.full(len(failed), 0.96), transform=ax.get_xaxis_transform(),
                            marker="x", markersize=8, linestyle="none", color=colors[variant],
                            clip_on=False, gid=f"not-compiled:{variant}")
            _length_axis(ax, panel.seq_len)
            _log_scale(ax)
            ax.set_ylabel("latency (ms, median)")
        drawn = {v for v in series.variant[series.status == "ok"]}
        handles = [Line2D([], [], color=colors[v], marker="o", label=v) for v in colors.ordered(drawn)]
        handles += [Line2D([], [], color="0.2", linestyle=style, marker="o", markerfacecolor=face or "0.2",
                           label=label) for label, style, face in COMPILED_STYLE.values()]
        if ((series.status != "ok") & series.compiled).any():
            handles.append(Line2D([], [], color="0.2", marker="x", linestyle="none",
                                  label="compiled: did not run"))
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
    return fig


def ratio_chart(ratios: pd.DataFrame, threshold: float, colors=None):
    """Latency of this run over the baseline's, per configuration; the band is the regression threshold."""
    def threshold_band(ax, _panel):
        ax.axhspan(1 - threshold, 1 + threshold, color="0.85", zorder=0)
        ax.axhline(1.0, color="0.4", linewidth=1)

    return metric_vs_length(ratios, "ratio", "latency / baseline latency", "Latency against the baseline",
                            log_y=False, decorate=threshold_band, colors=colors)


LAYOUT_HATCH = {"padded": "///", "packed": ""}  # padded bars hatched and paler, packed solid


def ragged_chart(frame: pd.DataFrame, colors=None):
    """Real-token tokens/s of padded against packed batches (data.ragged), one panel per configuration
    (device, dtype, mode, N, length distribution): per variant, grouped by family in the legend's order, a
    padded bar (hatched, paler) beside a packed one (solid) in the family's hue; 'n/a' where a layout did
    not run (unsupported, failed), its reason in the report's table."""
    if frame.empty or not (frame.status == "ok").any():
        return None
    frame = frame.assign(panel_col=[f"{m} {dt}" for m, dt in zip(frame["mode"], frame.dtype, strict=True)],
                         panel_row=[f"N = {length_label(n)}, lengths {d}" + (f"\n{dev}" if frame.device_name
                                    .nunique() > 1 else "") for n, d, dev in
                                    zip(frame.seq_len, frame.lengths, frame.device_name, strict=True)])
    colors = _colors_for(frame, colors, "variant")
    panels = [(r, c) for c in sorted(frame.panel_col.unique()) for r in sorted(frame.panel_row.unique())
              if ((frame.panel_row == r) & (frame.panel_col == c)).any()]
    width = BAR_GROUP_WIDTH / 2
    with _style():
        fig, axes = _grid(panels, "Ragged batches: padded vs packed, tokens/s over real tokens")
        for (row, col), ax in axes.items():
            panel = frame[(frame.panel_row == row) & (frame.panel_col == col)]
            names = colors.ordered(set(panel.variant))
            for x, name in enumerate(names):
                for offset, layout in ((-width / 2, "padded"), (width / 2, "packed")):
                    point = panel[(panel.variant == name) & (panel.layout == layout)]
                    ok = point[point.status == "ok"]
                    if ok.empty:
                        ax.text(x + offset, 0.02, "n/a", transform=ax.get_xaxis_transform(), ha="center",
                                va="bottom", fontsize="x-small", rotation=90, color="0.35")
                        continue
                    ax.bar(x + offset, ok.tokens_per_s.iloc[0], width, color=colors[name],
                           alpha=0.55 if layout == "padded" else 1.0, hatch=LAYOUT_HATCH[layout],
                           edgecolor="0.2", linewidth=0.6, gid=f"{layout}:{name}")
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
            _log_scale(ax, "y", engineering=True)
            ax.set_ylabel("real tokens / s")
        handles = [Patch(facecolor="0.6", alpha=0.55, hatch="///", edgecolor="0.2", label="padded"),
                   Patch(facecolor="0.6", edgecolor="0.2", label="packed")]
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
    return fig


def mark_smoke(fig: Figure, reasons: list[str]) -> None:
    """Say under the chart's title that it shows a smoke run (quick profile, one seed), when it does."""
    title = fig.get_suptitle()
    if reasons and SMOKE_LABEL not in title:
        suptitle(fig, title, bool(fig.legends), note=f"{SMOKE_LABEL} ({', '.join(reasons)}): not findings")


def save(fig: Figure, out_dir: Path, name: str) -> Path:
    """Write NAME.svg atomically and return its path. One format: SVG, which scales to any screen and
    print, keeps its text (fonts as paths: it needs nothing from outside) and is the same bytes for the
    same chart (no date written)."""
    svg = out_dir / f"{name}.svg"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    store.atomic_write(svg, buffer.getvalue())
    return svg
