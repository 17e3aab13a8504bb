"""The hierarchical bootstrap: coverage, what widens an interval, and the verdict helpers."""

import numpy as np
import pytest

from suites import intervals as I


def test_interval_contains_the_mean_and_narrows_with_more_examples():
    rng = np.random.default_rng(1)
    small = I.estimate([rng.random(20) < 0.7 for _ in range(3)])
    large = I.estimate([rng.random(2000) < 0.7 for _ in range(3)])
    for e in (small, large):
        assert e.low <= e.mean <= e.high
    assert (large.high - large.low) < 0.3 * (small.high - small.low)
    assert large.low < 0.7 < large.high


def test_seeds_that_disagree_widen_the_interval():
    agree = I.estimate([np.ones(500) * 0.5, np.ones(500) * 0.5, np.ones(500) * 0.5])
    disagree = I.estimate([np.ones(500) * 0.1, np.ones(500) * 0.5, np.ones(500) * 0.9])
    assert agree.mean == pytest.approx(0.5) and disagree.mean == pytest.approx(0.5)
    assert agree.high - agree.low < 1e-9  # constant examples, identical seeds: nothing to resample
    assert disagree.high - disagree.low > 0.3


def test_coverage_of_the_true_mean_is_near_95_percent(monkeypatch):
    """Binary outcomes of known rate p, 3 seeds of 100 examples, many repetitions."""
    monkeypatch.setattr(I, "N_RESAMPLES", 500)
    rng, p, hits, trials = np.random.default_rng(7), 0.6, 0, 150
    for _ in range(trials):
        e = I.estimate([rng.random(100) < p for _ in range(3)])
        hits += e.low <= p <= e.high
    assert 0.88 <= hits / trials <= 0.995


def test_difference_and_verdicts():
    high, low = [np.ones(200)] * 3, [np.zeros(200) + (np.arange(200) < 40)] * 3
    d = I.difference(high, low)
    assert d.mean == pytest.approx(0.8) and d.low > 0.7
    assert I.at_least(I.estimate(high), 0.95) is True
    assert I.at_least(I.estimate(low), 0.95) is False
    around = I.estimate([np.arange(100) < 95])  # 0.95 with an interval on both sides of it
    assert I.at_least(around, 0.95) is None and I.at_most(around, 0.95) is None
    assert I.at_most(I.estimate(low), 0.5) is True
    assert I.all_of([True, True]) is True and I.all_of([True, None]) is None
    assert I.all_of([None, False]) is False and I.all_of([]) is None


def test_the_same_rows_give_the_same_interval():
    data = [np.random.default_rng(3).random(50) < 0.5 for _ in range(3)]
    assert I.estimate(data) == I.estimate(data)


def test_a_seed_without_examples_is_an_error():
    with pytest.raises(ValueError, match="at least one test example"):
        I.estimate([[1.0], []])
