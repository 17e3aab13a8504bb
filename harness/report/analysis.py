"""Findings computed from throughput points: feasible lengths, scaling fits, crossings, Pareto."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special  # not scipy.stats: a second to import, for one quantile

from harness.report import data

MIN_FIT_POINTS = 3
MIN_LENGTHS = 3  # a finding about scaling (largest feasible N, exponent, crossover) needs this many lengths
SIZE_FAILURES = ("oom", "skipped", "timeout")  # what ends a sweep for being too large
SMOKE_PART_NAMES = {"throughput": "throughput", "exactness": "exactness", "learned": "learned tasks"}
LARGEST_COLUMNS = ["config", "variant", "largest_feasible_n", "first_failure", "measured_up_to", "lengths"]


def largest_feasible(points: pd.DataFrame) -> pd.DataFrame:
    """Per (config, series): the largest N that ran, when the sweep found one: a size failure (out of
    memory, skipped after one, timeout) at a larger N, over at least MIN_LENGTHS lengths. Otherwise
    largest_feasible_n is empty and first_failure says why (nothing failed, too few lengths, unsupported).
    """
    rows = []
    for (config, series), group in points.groupby(["config", "series"], sort=True):
        ok = group[group.status == "ok"]
        largest = int(ok.seq_len.max()) if not ok.empty else None
        beyond = group[(group.status != "ok") & (group.seq_len > (largest or 0))].sort_values("seq_len")
        lengths = group.seq_len.nunique()
        top = int(group.seq_len.max())
        if ok.empty and (group.status == "unsupported").all():
            found, why = None, "unsupported"
        elif beyond.empty:
            found, why = None, f"no failure up to N = {top}"
        elif beyond.iloc[0].status not in SIZE_FAILURES:
            found, why = None, f"{failure_label(beyond.iloc[0])} (not a size limit)"
        elif lengths < MIN_LENGTHS:
            found, why = None, f"{failure_label(beyond.iloc[0])}; {lengths} lengths, too few to say"
        else:
            found, why = largest, failure_label(beyond.iloc[0])
        rows.append({"config": config, "variant": series, "largest_feasible_n": found, "first_failure": why,
                     "measured_up_to": top, "lengths": lengths})
    table = pd.DataFrame(rows, columns=LARGEST_COLUMNS)
    return table.assign(largest_feasible_n=pd.to_numeric(table.largest_feasible_n).astype(float))


def failure_label(point) -> str:
    """'oom at N = 8192'; a variant that cannot run at all is just 'unsupported'."""
    return point.status if point.status == "unsupported" else f"{point.status} at N = {point.seq_len}"


# --- scaling fits and crossovers with their uncertainty ------------------------------------------------

FIT_FROM_N = 2048  # fits read the lengths from here on (fixed costs flatten shorter ones) when 3 are there
CONFIDENCE = 0.95


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t with `df` degrees of freedom (inf where there is none: df <= 0)."""
    return float(special.stdtrit(df, p)) if df > 0 else math.inf


def fit_with_interval(seq_lens, latencies, confidence: float = CONFIDENCE):
    """(k, k_low, k_high, r2) of log latency = k log N + c by least squares, with the t interval of the
    slope; None for fewer than 3 lengths. Two points fix a line: they give no interval."""
    x, y = np.log(np.asarray(seq_lens, float)), np.log(np.asarray(latencies, float))
    n = len(x)
    if n < MIN_FIT_POINTS or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    spread = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / spread if spread > 0 else 1.0
    se = math.sqrt((residual**2).sum() / (n - 2) / ((x - x.mean()) ** 2).sum())
    half = t_quantile(0.5 + confidence / 2, n - 2) * se
    return float(slope), float(slope - half), float(slope + half), float(r2)


def fit_tail(group: pd.DataFrame) -> list[int]:
    """The lengths a fit reads, the first rule that yields 3: those at batch 1; those >= FIT_FROM_N; the
    larger half. Batch 1 first because a constant-token sweep shrinks the batch along its tail, and on a
    CPU the batch x heads slices are what the threads split: the last steps to batch 1 lose parallelism
    (on 2 threads up to 2x per token), which a fit across them reads as extra growth with N."""
    lengths = sorted(set(int(n) for n in group.seq_len))
    single = sorted(set(int(n) for n in group.seq_len[group.batch.fillna(1) <= 1]))
    tail = [n for n in lengths if n >= FIT_FROM_N]
    for chosen in (single, tail):
        if len(chosen) >= MIN_FIT_POINTS:
            return chosen
    return lengths[-max(MIN_FIT_POINTS, (len(lengths) + 1) // 2):]


def scaling_fits(points: pd.DataFrame) -> pd.DataFrame:
    """Per (config, series): k in time per sequence ~ N^k, with its 95% interval.

    Time per sequence is latency / batch: in a constant-token sweep the batch shrinks as N grows, so
    per sequence quadratic attention shows k = 2 and linear-time mixers k = 1, as at a fixed batch.
    `noisy_points` counts the fitted points flagged noisy.
    """
    columns = ["config", "variant", "exponent", "k_low", "k_high", "r2", "points", "fit_from_n", "fit_to_n",
               "noisy_points"]
    rows = []
    ok = points[(points.status == "ok") & points.latency_ms.notna()]
    for (config, series), group in ok.groupby(["config", "series"], sort=True):
        tail = group[group.seq_len.isin(fit_tail(group))].sort_values("seq_len")
        per_sequence = tail.latency_ms / tail.batch.fillna(1).clip(lower=1)
        fit = fit_with_interval(tail.seq_len, per_sequence)
        if fit is None:
            continue
        rows.append({"config": config, "variant": series, "exponent": round(fit[0], 3),
                     "k_low": round(fit[1], 3), "k_high": round(fit[2], 3), "r2": round(fit[3], 4),
                     "points": len(tail), "fit_from_n": int(tail.seq_len.iloc[0]),
                     "fit_to_n": int(tail.seq_len.iloc[-1]), "noisy_points": int((tail.noisy > 0).sum())})
    return pd.DataFrame(rows, columns=columns)


NOISE_FLOOR = 0.01  # a point's relative uncertainty is at least this (rows without an interval: exact)


@dataclass(frozen=True)
class Crossing:
    """`faster` is measurably faster than `slower` at every length from `faster_from` on, and was
    measurably slower at `slower_at` (the last such length); `estimate` interpolates where the medians
    cross. Lengths between the two where neither is measurably faster are `within_noise`."""

    config: str
    faster: str
    slower: str
    slower_at: int
    faster_from: int
    estimate: float
    within_noise: tuple[int, ...] = field(default=())

    @property
    def sentence(self) -> str:
        tie = (f"; within noise at N = {', '.join(map(str, self.within_noise))}" if self.within_noise else "")
        return (f"{self.faster} beats {self.slower} on {self.config} from N ~ {self.estimate:.0f} "
                f"(slower at {self.slower_at}, faster from {self.faster_from}{tie})")


def _uncertainty(frame: pd.DataFrame) -> pd.Series:
    ci = frame.median_ci if "median_ci" in frame else pd.Series(np.nan, index=frame.index)
    return ci.fillna(0.0).clip(lower=NOISE_FLOOR)


def crossings(points: pd.DataFrame) -> list[Crossing]:
    """Pairs whose order flips for good as N grows, each length judged with the medians' intervals.

    At each length both ran, A is measurably faster than B when A's median plus its interval is below
    B's median minus its interval (and measurably slower the other way round); otherwise the two are
    within noise there. A crossing needs a length where A was measurably slower, then only lengths where
    it is not, ending in measurably faster: its interval is (slower_at, faster_from].
    """
    found = []
    ok = points[(points.status == "ok") & points.latency_ms.notna()]
    for config, group in ok.groupby("config", sort=True):
        latency = group.pivot_table(index="seq_len", columns="series", values="latency_ms")
        noise = group.assign(u=_uncertainty(group)).pivot_table(index="seq_len", columns="series", values="u")
        for a in latency.columns:
            for b in latency.columns:
                if a != b:
                    crossing = _crossing(config, a, b, latency[[a, b]].dropna(), noise)
                    if crossing is not None:
                        found.append(crossing)
    return found


def _crossing(config: str, a: str, b: str, both: pd.DataFrame, noise: pd.DataFrame) -> Crossing | None:
    if len(both) < MIN_LENGTHS:  # with two lengths any difference in slope reads as a crossover
        return None
    n = both.index.to_numpy()
    ua, ub = noise.loc[n, a].to_numpy(), noise.loc[n, b].to_numpy()
    la, lb = both[a].to_numpy(), both[b].to_numpy()
    state = np.where(la * (1 + ua) < lb * (1 - ub), 1, np.where(la * (1 - ua) > lb * (1 + ub), -1, 0))
    slower = np.flatnonzero(state == -1)
    if not len(slower) or state[-1] != 1:
        return None
    last_slower = slower[-1]
    first_faster = last_slower + 1 + int(np.argmax(state[last_slower + 1:] == 1))
    ratio = np.log(la / lb)
    # Where log(A / B) crosses 0, between the last length A's median was slower and the next one.
    above = last_slower + int(np.flatnonzero(ratio[last_slower:first_faster + 1] > 0)[-1])
    x0, x1, r0, r1 = np.log(n[above]), np.log(n[above + 1]), ratio[above], ratio[above + 1]
    estimate = float(np.exp(x0 + (x1 - x0) * r0 / (r0 - r1))) if r0 != r1 else float(n[above + 1])
    ties = tuple(int(v) for v in n[last_slower + 1:first_faster])
    return Crossing(config, a, b, int(n[last_slower]), int(n[first_faster]), estimate, ties)


def primary_config(points: pd.DataFrame) -> str | None:
    """The config a one-line summary speaks of: forward, the most variants, preferred dtype, causal.

    Most variants before the dtype: a CPU sweep runs every variant in fp32 and only the fast paths in
    bf16, so its headline is the fp32 sweep."""
    ok = points[points.status == "ok"]
    if ok.empty:
        return None
    dtype_rank = {d: i for i, d in enumerate(data.DTYPE_PREFERENCE)}
    mode_rank = {m: i for i, m in enumerate(data.MODE_NAMES)}
    summary = ok.groupby("config").agg(mode=("mode", "first"), dtype=("dtype", "first"),
                                       causal=("causal", "first"), variants=("series", "nunique"))
    summary["key"] = list(zip(summary["mode"].map(mode_rank).fillna(9), -summary.variants,
                              summary.dtype.map(dtype_rank).fillna(9), ~summary.causal.astype(bool),
                              strict=True))
    return summary.sort_values("key").index[0]


def primary_configs(points: pd.DataFrame) -> list[str]:
    """One headline config per device (results of several machines are summarized machine by machine)."""
    found = [primary_config(group) for _, group in points.groupby("device_name", sort=True)]
    return [c for c in found if c is not None]


def pareto_front(x: pd.Series, y: pd.Series) -> pd.Series:
    """True for the points no other point beats on both x and y (higher is better for both)."""
    xs, ys = x.to_numpy(float), y.to_numpy(float)
    dominated = [bool(np.any((xs >= xi) & (ys >= yi) & ((xs > xi) | (ys > yi)))) for xi, yi in zip(xs, ys,
                                                                                                   strict=True)]
    return pd.Series(~np.array(dominated, dtype=bool), index=x.index)


@dataclass
class Pareto:
    points: pd.DataFrame  # variant, tokens_per_s, accuracy, on_front
    seq_len: int
    config: str
    tasks: list[str]


def pareto(points: pd.DataFrame, best: pd.DataFrame, seq_len: int | None = None) -> Pareto | None:
    """Quality (mean best-LR accuracy on the tasks every variant has) vs tokens/s at one N.

    Default N: the length where the most variants have both figures (the larger on a tie).
    """
    config = primary_config(points)
    per_task = data.task_accuracy(best)
    if config is None or per_task.empty:
        return None
    speed = points[(points.config == config) & (points.status == "ok")]
    speed = speed[speed.variant.isin(per_task.variant)]
    if seq_len is None:
        counts = speed.groupby("seq_len").variant.nunique()
        if counts.empty:
            return None
        seq_len = int(counts[counts == counts.max()].index.max())
    at_n = speed[speed.seq_len == seq_len].groupby("variant").tokens_per_s.median()
    per_task = per_task[per_task.variant.isin(at_n.index)]
    tasks = sorted(set.intersection(*(set(g.task) for _, g in per_task.groupby("variant")))) if len(
        per_task) else []
    if not tasks:
        return None
    accuracy = per_task[per_task.task.isin(tasks)].groupby("variant").accuracy.mean()
    table = pd.DataFrame({"tokens_per_s": at_n, "accuracy": accuracy}).dropna().reset_index(
        names="variant")
    table["on_front"] = pareto_front(table.tokens_per_s, table.accuracy)
    return Pareto(table.sort_values("tokens_per_s", ignore_index=True), seq_len, config, tasks)


def pareto_lengths(points: pd.DataFrame, best: pd.DataFrame) -> list[int]:
    """The lengths a quality-vs-throughput chart can be drawn at (for --pareto-n)."""
    return [int(n) for n in sorted(set(points.seq_len[points.status == "ok"])) if pareto(points, best, n)]


@dataclass
class Findings:
    """Everything the report shows, computed once from the rows."""

    points: pd.DataFrame  # throughput, one per (config, series, N)
    best: pd.DataFrame  # learned-task rows at each model's best learning rate
    exactness: pd.DataFrame
    largest: pd.DataFrame
    fits: pd.DataFrame  # exponents of time per sequence, with intervals
    crossings: list[Crossing]  # crossovers judged against the medians' intervals
    primary: str | None  # the throughput config the Pareto chart and one-line summaries speak of
    headlines: list[str]  # one such config per device
    pareto: Pareto | None
    smoke: dict[str, list[str]]  # part (throughput, exactness, learned) -> why it is a smoke run, if it is
    # Eager against compiled latency (data.compiled_series): empty without a --compile run
    compiled: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Ragged batches, one per (configuration, variant, layout) (data.ragged); empty: none were run.
    ragged: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def compute(cls, rows: pd.DataFrame, pareto_n: int | None = None) -> Findings:
        pts = data.points(data.throughput(rows))
        best = data.best_lr(data.learned(rows))
        return cls(points=pts, best=best, exactness=data.exactness(rows), largest=largest_feasible(pts),
                   fits=scaling_fits(pts), crossings=crossings(pts), primary=primary_config(pts),
                   headlines=primary_configs(pts), pareto=pareto(pts, best, pareto_n),
                   smoke=data.smoke_reasons(rows), compiled=data.compiled_series(rows),
                   ragged=data.ragged(rows))

    def smoke_sentence(self) -> str | None:
        """'Smoke run (throughput: quick profile; learned tasks: one seed per model): ...', or None."""
        parts = [f"{SMOKE_PART_NAMES[part]}: {', '.join(why)}" for part, why in self.smoke.items() if why]
        if not parts:
            return None
        return (f"Smoke run ({'; '.join(parts)}): it shows that the pipeline works, not which architecture "
                f"to choose.")

    def smoke_for(self, *parts: str) -> list[str]:
        """The smoke-run reasons of the given parts, each once."""
        return list(dict.fromkeys(r for part in parts for r in self.smoke.get(part, [])))

    def families(self) -> dict[str, str]:
        """Every series and variant the charts may draw -> its family (rows' `family`)."""
        found = {}
        for frame, name in ((self.exactness, "variant"), (self.best, "variant"), (self.points, "series"),
                            (self.ragged, "variant")):
            if not frame.empty and "family" in frame:
                found.update(zip(frame[name], frame.family.astype(object).fillna(""), strict=True))
        return {name: family or str(name).split(" ")[0].split("-")[0] for name, family in found.items()}

    def variants(self) -> list[str]:
        return sorted(set(self.points.series) | set(self.best.get("variant", [])) |
                      set(self.exactness.get("variant", [])))
