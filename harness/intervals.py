"""Confidence intervals for learned-task accuracy over a few seeds, with the coverage they state.

An accuracy is a mean over trained models (seeds) of each model's mean over its test examples. Both vary:
another seed trains another model, another test set draws other examples. Each seed's mean carries both,
so the spread of the seed means measures both, and a t-interval over them (n - 1 degrees of freedom)
covers the true mean as stated even at 3 seeds, where it is wide (t = 4.30). A percentile bootstrap over
3 seeds has only 10 distinct seed resamples and covered 78-85% at a nominal 95% (results/README.md).

Seeds that all score the same (every seed at 1.000 on 512 examples) would give a t-interval of width
zero, although the test examples are a sample. So the interval is never narrower than the examples
allow: it is the union of the t-interval and a Clopper-Pearson interval on the pooled test examples
(their sum as successes: for scores in [0, 1] a conservative bound, binomial being the widest variance
at a given mean). A difference between configurations is a Welch interval over the seed means
(Welch-Satterthwaite degrees of freedom), joined with the examples' intervals combined by Newcombe's
square-and-add; `contrast` does the same for any linear combination of configurations.

Fewer than MIN_SEEDS seeds decide nothing: `at_least` and `at_most` return None (undecided) for them,
and every estimate carries its seed count.

It lives in harness/ because both the findings (suites.findings) and `recommend` (harness.report) state
its intervals, and harness/ imports nothing from suites/.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special  # the quantile functions themselves: scipy.stats takes a second to import

LEVEL = 0.95
MIN_SEEDS = 3  # fewer seeds give no verdict


@dataclass(frozen=True)
class Estimate:
    """A mean accuracy (or a difference of them) with its 95% interval, from n_seeds trained models."""

    mean: float
    low: float
    high: float
    n_seeds: int  # per configuration (the smallest, for a difference)
    n_examples: int  # per seed (the smallest, when they differ)

    @property
    def decisive(self) -> bool:
        """Enough seeds for a verdict."""
        return self.n_seeds >= MIN_SEEDS

    def as_dict(self) -> dict:
        return {"mean": round(float(self.mean), 6), "low": round(float(self.low), 6),
                "high": round(float(self.high), 6), "n_seeds": int(self.n_seeds),
                "n_examples": int(self.n_examples)}

    def text(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n_seeds})"


def _arrays(per_seed: Sequence[Sequence[float]]) -> list[np.ndarray]:
    arrays = [np.asarray(x, dtype=float) for x in per_seed]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("every seed needs at least one test example")
    return arrays


def _t_quantile(df: float) -> float:
    return float(special.stdtrit(df, 0.5 + LEVEL / 2))  # Student's t quantile


def examples_interval(per_seed: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """(pooled mean, low, high): Clopper-Pearson on every test example of every seed together."""
    pooled = np.concatenate(_arrays(per_seed))
    n, k = pooled.size, float(pooled.sum())
    tail = (1 - LEVEL) / 2
    low = 0.0 if k <= 0 else float(special.betaincinv(k, n - k + 1, tail))  # beta quantile
    high = 1.0 if k >= n else float(special.betaincinv(k + 1, n - k, 1 - tail))
    return k / n, low, high


def estimate(per_seed: Sequence[Sequence[float]]) -> Estimate:
    """Mean accuracy over seeds (each seed's mean over its examples) with its interval.

    per_seed: for each seed, the per-example accuracies on its test set (each in [0, 1])."""
    arrays = _arrays(per_seed)
    means = np.array([a.mean() for a in arrays])
    mean, n = float(means.mean()), len(means)
    half = _t_quantile(n - 1) * means.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
    _, ex_low, ex_high = examples_interval(arrays)
    low, high = min(mean - half, ex_low), max(mean + half, ex_high)
    return Estimate(mean, float(max(0.0, low)), float(min(1.0, high)), n, min(a.size for a in arrays))


def contrast(terms: Sequence[tuple[float, Sequence[Sequence[float]]]]) -> Estimate:
    """sum(c * mean accuracy) over independent configurations, e.g. [(1, a), (-1, b)] for a - b.

    Welch-Satterthwaite over the seed means, joined with the examples' Clopper-Pearson intervals
    combined by square-and-add (Newcombe): the interval does not collapse when every seed agrees."""
    value, variance, df_denominator, below, above = 0.0, 0.0, 0.0, 0.0, 0.0
    n_seeds, n_examples = [], []
    for c, per_seed in terms:
        arrays = _arrays(per_seed)
        means = np.array([a.mean() for a in arrays])
        n = len(means)
        value += c * float(means.mean())
        if n > 1:
            share = c * c * float(means.var(ddof=1)) / n
            variance += share
            df_denominator += share * share / (n - 1)
        p, low, high = examples_interval(arrays)
        down, up = (p - low, high - p) if c > 0 else (high - p, p - low)
        below, above = below + (c * down) ** 2, above + (c * up) ** 2
        n_seeds.append(n)
        n_examples.append(min(a.size for a in arrays))
    half = 0.0
    if variance > 0 and min(n_seeds) > 1:
        half = _t_quantile(variance * variance / df_denominator) * np.sqrt(variance)
    low = min(value - half, value - float(np.sqrt(below)))
    high = max(value + half, value + float(np.sqrt(above)))
    return Estimate(value, float(low), float(high), min(n_seeds), min(n_examples))


def difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> Estimate:
    """Mean accuracy of a minus that of b (independent seeds), with its interval."""
    return contrast([(1.0, a), (-1.0, b)])


def at_least(e: Estimate | None, threshold: float) -> bool | None:
    """True when the whole interval is at or above threshold, False when it is below, else None (also
    for fewer than MIN_SEEDS seeds, and for no estimate)."""
    if e is None or not e.decisive:
        return None
    if e.low >= threshold:
        return True
    return False if e.high < threshold else None


def at_most(e: Estimate | None, threshold: float) -> bool | None:
    """True when the whole interval is at or below threshold, False when it is above, else None (also
    for fewer than MIN_SEEDS seeds, and for no estimate)."""
    if e is None or not e.decisive:
        return None
    if e.high <= threshold:
        return True
    return False if e.low > threshold else None


def above(e: Estimate | None, threshold: float) -> bool | None:
    """Strictly above: True when the interval lies above threshold, False when it reaches down to it or
    lies below, None when undecided (fewer than MIN_SEEDS seeds, or no estimate). A difference above 0."""
    if e is None or not e.decisive:
        return None
    return True if e.low > threshold else False if e.high <= threshold else None


def all_of(verdicts: Sequence[bool | None]) -> bool | None:
    """False if any is False, None if any is undecided, else True (an empty list decides nothing)."""
    if not verdicts or any(v is False for v in verdicts):
        return None if not verdicts else False
    return None if any(v is None for v in verdicts) else True
