"""Confidence intervals for learned-task accuracy: a hierarchical bootstrap over seeds and test examples.

An accuracy is a mean over trained models (seeds) of each model's mean over its test examples. Both vary:
another seed trains another model, another test set draws other examples. The bootstrap resamples both
levels (seeds with replacement, then each drawn seed's examples with replacement), so an interval is
wide when the seeds disagree or when the test set is small. With one seed it is the examples' interval
alone. A difference between two configurations resamples each independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95
RNG_SEED = 0  # the same rows always give the same interval


@dataclass(frozen=True)
class Estimate:
    """A mean accuracy with its 95% interval, from n_seeds trained models and their test examples."""

    mean: float
    low: float
    high: float
    n_seeds: int
    n_examples: int  # per seed (the smallest, when they differ)

    def as_dict(self) -> dict:
        return {"mean": round(self.mean, 4), "low": round(self.low, 4), "high": round(self.high, 4),
                "n_seeds": self.n_seeds, "n_examples": self.n_examples}

    def text(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _resampled_means(per_seed: Sequence[Sequence[float]], rng: np.random.Generator) -> np.ndarray:
    """N_RESAMPLES bootstrap means: seeds drawn with replacement, then each one's examples."""
    arrays = [np.asarray(x, dtype=float) for x in per_seed]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("every seed needs at least one test example")
    seeds = rng.integers(0, len(arrays), size=(N_RESAMPLES, len(arrays)))
    seed_means = np.empty(seeds.shape)
    for s, examples in enumerate(arrays):  # resample the examples of every seed once per draw of it
        drawn = seeds == s
        # Resampling n examples with replacement draws multinomial counts of their distinct values.
        values, counts = np.unique(examples, return_counts=True)
        picks = rng.multinomial(examples.size, counts / examples.size, size=int(drawn.sum()))
        seed_means[drawn] = picks @ values / examples.size
    return seed_means.mean(axis=1)


def _interval(draws: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def estimate(per_seed: Sequence[Sequence[float]]) -> Estimate:
    """Mean accuracy over seeds (each seed's mean over its examples) with its bootstrap interval.

    per_seed: for each seed, the per-example accuracies on its test set (each in [0, 1])."""
    draws = _resampled_means(per_seed, np.random.default_rng(RNG_SEED))
    mean = float(np.mean([np.mean(x) for x in per_seed]))
    return Estimate(mean, *_interval(draws), len(per_seed), min(len(x) for x in per_seed))


def difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> Estimate:
    """Mean accuracy of a minus that of b, with the interval of the difference (independent resamples)."""
    rng = np.random.default_rng(RNG_SEED)
    draws = _resampled_means(a, rng) - _resampled_means(b, rng)
    mean = float(np.mean([np.mean(x) for x in a]) - np.mean([np.mean(x) for x in b]))
    return Estimate(mean, *_interval(draws), min(len(a), len(b)), min(min(map(len, a)), min(map(len, b))))


def at_least(e: Estimate, threshold: float) -> bool | None:
    """True when the whole interval is at or above threshold, False when it is below, else None."""
    if e.low >= threshold:
        return True
    return False if e.high < threshold else None


def at_most(e: Estimate, threshold: float) -> bool | None:
    """True when the whole interval is at or below threshold, False when it is above, else None."""
    if e.high <= threshold:
        return True
    return False if e.low > threshold else None


def all_of(verdicts: Sequence[bool | None]) -> bool | None:
    """False if any is False, None if any is undecided, else True (an empty list decides nothing)."""
    if not verdicts or any(v is False for v in verdicts):
        return None if not verdicts else False
    return None if any(v is None for v in verdicts) else True
