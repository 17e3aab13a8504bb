"""Findings computed from throughput points: feasible lengths, scaling exponents, crossovers, Pareto."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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


def fit_exponent(seq_lens, latencies) -> tuple[float, float] | None:
    """Slope and r^2 of log latency vs log N over the larger half of the lengths (>= 3 points).

    Small lengths are left out because fixed costs (launches, overheads) flatten them.
    """
    order = np.argsort(seq_lens)
    n = np.asarray(seq_lens, float)[order]
    t = np.asarray(latencies, float)[order]
    if len(n) < MIN_FIT_POINTS:
        return None
    keep = max(MIN_FIT_POINTS, (len(n) + 1) // 2)
    x, y = np.log(n[-keep:]), np.log(t[-keep:])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    spread = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / spread if spread > 0 else 1.0
    return float(slope), float(r2)


def scaling_exponents(points: pd.DataFrame) -> pd.DataFrame:
    """Per (config, series): k in latency ~ N^k, from the ok points."""
    rows = []
    ok = points[(points.status == "ok") & points.latency_ms.notna()]
    for (config, series), group in ok.groupby(["config", "series"], sort=True):
        fit = fit_exponent(group.seq_len, group.latency_ms)
        if fit is not None:
            used = sorted(group.seq_len)[-max(MIN_FIT_POINTS, (len(group) + 1) // 2):]
            rows.append({"config": config, "variant": series, "exponent": round(fit[0], 2),
                         "r2": round(fit[1], 3), "fit_from_n": int(used[0]), "fit_to_n": int(used[-1])})
    return pd.DataFrame(rows, columns=["config", "variant", "exponent", "r2", "fit_from_n", "fit_to_n"])


@dataclass(frozen=True)
class Crossover:
    """`faster` has the lower latency at every measured N from `from_n` up; at `slower_at` it did not."""

    config: str
    faster: str
    slower: str
    from_n: int
    slower_at: int

    @property
    def sentence(self) -> str:
        return (f"{self.faster} beats {self.slower} from N = {self.from_n} on {self.config} "
                f"(slower at N = {self.slower_at})")


def crossovers(points: pd.DataFrame) -> list[Crossover]:
    """Pairs whose latency order flips once, for good, as N grows (on the lengths both ran, at least
    MIN_LENGTHS of them: with two, any difference in slope reads as a crossover)."""
    found = []
    ok = points[(points.status == "ok") & points.latency_ms.notna()]
    for config, group in ok.groupby("config", sort=True):
        table = group.pivot_table(index="seq_len", columns="series", values="latency_ms")
        for a in table.columns:
            for b in table.columns:
                if a == b:
                    continue
                both = table[[a, b]].dropna()
                faster = (both[a] < both[b]).to_numpy()
                if len(both) < MIN_LENGTHS or faster[0] or not faster[-1]:
                    continue
                first = len(faster) - np.argmin(faster[::-1])  # start of the trailing run of wins
                found.append(Crossover(config, a, b, int(both.index[first]), int(both.index[first - 1])))
    return found


def primary_config(points: pd.DataFrame) -> str | None:
    """The config a one-line summary speaks of: forward, preferred dtype, causal, most variants."""
    ok = points[points.status == "ok"]
    if ok.empty:
        return None
    dtype_rank = {d: i for i, d in enumerate(data.DTYPE_PREFERENCE)}
    mode_rank = {m: i for i, m in enumerate(data.MODE_NAMES)}
    summary = ok.groupby("config").agg(mode=("mode", "first"), dtype=("dtype", "first"),
                                       causal=("causal", "first"), variants=("series", "nunique"))
    summary["key"] = list(zip(summary["mode"].map(mode_rank).fillna(9),
                              summary.dtype.map(dtype_rank).fillna(9),
                              ~summary.causal.astype(bool), -summary.variants, strict=True))
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
    exponents: pd.DataFrame
    crossovers: list[Crossover]
    primary: str | None  # the throughput config the Pareto chart and one-line summaries speak of
    headlines: list[str]  # one such config per device
    pareto: Pareto | None
    smoke: dict[str, list[str]]  # part (throughput, exactness, learned) -> why it is a smoke run, if it is

    @classmethod
    def compute(cls, rows: pd.DataFrame, pareto_n: int | None = None) -> Findings:
        pts = data.points(data.throughput(rows))
        best = data.best_lr(data.learned(rows))
        return cls(points=pts, best=best, exactness=data.exactness(rows), largest=largest_feasible(pts),
                   exponents=scaling_exponents(pts), crossovers=crossovers(pts), primary=primary_config(pts),
                   headlines=primary_configs(pts), pareto=pareto(pts, best, pareto_n),
                   smoke=data.smoke_reasons(rows))

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

    def variants(self) -> list[str]:
        return sorted(set(self.points.series) | set(self.best.get("variant", [])) |
                      set(self.exactness.get("variant", [])))
