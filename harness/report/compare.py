"""Two runs side by side: every case measured in both, and the changes beyond a threshold flagged.

Throughput cases are matched by case_id (the same configuration has the same id in every run): latency
and peak memory are compared as ratios, a case that ran before and fails now is a regression. Learned
tasks are matched per trained model and evaluation (the best learning rate of each run, which may
differ) and compared in absolute accuracy (threshold 0.05 = 5 points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report import data

COLUMNS = ["what", "config", "variant", "seq_len", "baseline", "current", "change", "verdict"]
REGRESSION, IMPROVEMENT, SAME = "regression", "improvement", "within threshold"


@dataclass
class Comparison:
    baseline: str  # the baseline's path, as given
    threshold: float
    changes: pd.DataFrame  # COLUMNS; change: current/baseline - 1 for costs, current - baseline for accuracy
    ratios: pd.DataFrame  # latency ratio per point, shaped like data.points for charts.ratio_chart

    @property
    def regressions(self) -> pd.DataFrame:
        return self.changes[self.changes.verdict == REGRESSION]

    @property
    def improvements(self) -> pd.DataFrame:
        return self.changes[self.changes.verdict == IMPROVEMENT]


def verdict(change: float, threshold: float, higher_is_better: bool = False) -> str:
    worse = -change if higher_is_better else change
    return REGRESSION if worse > threshold else IMPROVEMENT if worse < -threshold else SAME


def compare(current: data.Results, baseline: data.Results, threshold: float, label: str) -> Comparison:
    throughput_changes, ratios = _throughput(current.rows, baseline.rows, threshold)
    parts = [p for p in (throughput_changes, _accuracy(current.rows, baseline.rows, threshold)) if len(p)]
    changes = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    changes["change"] = changes.change.astype(float)
    order = {REGRESSION: 0, IMPROVEMENT: 1, SAME: 2}
    changes = changes.sort_values(["verdict", "what", "config", "variant", "seq_len"],
                                  key=lambda c: c.map(order) if c.name == "verdict" else c, ignore_index=True)
    return Comparison(label, threshold, changes, ratios)


def _throughput(current: pd.DataFrame, baseline: pd.DataFrame, threshold: float):
    cur = data.throughput(current).drop_duplicates("case_id", keep="last")
    base = data.throughput(baseline).drop_duplicates("case_id", keep="last")
    matched = cur.merge(base[["case_id", "status", "latency_ms", "mem_alloc_peak_bytes"]], on="case_id",
                        suffixes=("", "_base"))
    rows = []
    for r in matched.itertuples():
        where = {"config": r.config, "variant": r.series, "seq_len": r.seq_len}
        if r.status == "ok" and r.status_base == "ok":
            for what, now, before, scale in (("latency (ms)", r.latency_ms, r.latency_ms_base, 1.0),
                                              ("peak memory (GiB)", r.mem_alloc_peak_bytes,
                                               r.mem_alloc_peak_bytes_base, 1 / data.GIB)):
                if np.isfinite(now) and np.isfinite(before) and before > 0:
                    change = now / before - 1
                    rows.append({"what": what, **where, "baseline": before * scale, "current": now * scale,
                                 "change": change, "verdict": verdict(change, threshold)})
        elif (r.status == "ok") != (r.status_base == "ok"):
            rows.append({"what": "status", **where, "baseline": r.status_base, "current": r.status,
                         "change": np.nan, "verdict": IMPROVEMENT if r.status == "ok" else REGRESSION})
    ok = matched[(matched.status == "ok") & (matched.status_base == "ok")]
    ratios = ok.assign(ratio=ok.latency_ms / ok.latency_ms_base)
    return pd.DataFrame(rows, columns=COLUMNS), ratios


def _accuracy(current: pd.DataFrame, baseline: pd.DataFrame, threshold: float) -> pd.DataFrame:
    keys = ["suite", "variant", "task", "train_len", "seq_len", "depth", "kv_pairs", "d_model", "n_layers",
            "dtype", "params"]

    def scores(rows):
        best = data.best_lr(data.learned(rows))
        if best.empty:
            return pd.DataFrame(columns=[*keys, "accuracy"])
        return best.groupby(keys, dropna=False).accuracy.mean().reset_index()

    matched = scores(current).merge(scores(baseline), on=keys, suffixes=("", "_base"))
    rows = []
    for r in matched.itertuples():
        config = f"{r.task}" + (f", depth {r.depth:g}" if pd.notna(r.depth) else "")
        change = r.accuracy - r.accuracy_base
        rows.append({"what": "accuracy", "config": config, "variant": r.variant, "seq_len": int(r.seq_len),
                     "baseline": r.accuracy_base, "current": r.accuracy, "change": change,
                     "verdict": verdict(change, threshold, higher_is_better=True)})
    return pd.DataFrame(rows, columns=COLUMNS)
