"""Intervals over few seeds: their coverage in simulation, the all-agree case, and the verdict helpers."""

import numpy as np
import pytest
from scipy import stats

from harness import intervals as I

EXPERIMENTS = 2000
EXAMPLES = 512  # test examples per seed, as the CPU grids score MQAR, selective copying and induction
SIMULATION_SEED = 20240611
# (mean, seed-to-seed standard deviation) of a configuration's accuracy. Near the ceiling a seed effect
# is bounded by 1: with 0.03 at 0.97 one seed in six sits at 1.000 and the t-interval covers 92-93%
# (results/README.md gives the figures); these are the regimes the test holds to 93%.
SCENARIOS = [(0.5, 0.0), (0.5, 0.03), (0.5, 0.1), (0.97, 0.0), (0.97, 0.01), (0.97, 0.02)]
DIFFERENCES = [((0.5, 0.03), (0.5, 0.03)), ((0.97, 0.02), (0.5, 0.1)), ((0.97, 0.0), (0.97, 0.01)),
               ((0.5, 0.1), (0.5, 0.0))]


def true_mean(mean: float, sd: float) -> float:
    """E[clip(N(mean, sd), 0, 1)]: the configuration's true accuracy."""
    if sd == 0:
        return mean
    a, b = -mean / sd, (1 - mean) / sd
    cdf, pdf = stats.norm.cdf, stats.norm.pdf
    return mean * (cdf(b) - cdf(a)) + sd * (pdf(a) - pdf(b)) + (1 - cdf(b))


def simulated_seeds(rng, mean: float, sd: float, n_seeds: int) -> list[np.ndarray]:
    """Per seed: a seed effect (the trained model's true accuracy), then EXAMPLES binomial outcomes."""
    rates = np.clip(rng.normal(mean, sd, n_seeds), 0, 1) if sd else np.full(n_seeds, mean)
    return [(rng.random(EXAMPLES) < r).astype(float) for r in rates]


def coverage(interval, scenario, n_seeds: int, experiments: int = EXPERIMENTS) -> float:
    """Share of simulated experiments whose interval covers the true mean (estimate: one scenario;
    difference: a pair of scenarios)."""
    rng, hits = np.random.default_rng(SIMULATION_SEED), 0
    pair = isinstance(scenario[0], tuple)
    truth = true_mean(*scenario[0]) - true_mean(*scenario[1]) if pair else true_mean(*scenario)
    for _ in range(experiments):
        if pair:
            first, second = (simulated_seeds(rng, *s, n_seeds) for s in scenario)
            e = interval(first, second)
        else:
            e = interval(simulated_seeds(rng, *scenario, n_seeds))
        hits += e.low <= truth <= e.high
    return hits / experiments


@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_95_percent_interval_covers_the_true_mean(scenario, n_seeds):
    assert coverage(I.estimate, scenario, n_seeds) >= 0.93


@pytest.mark.parametrize("n_seeds", [3, 5])
@pytest.mark.parametrize("scenario", DIFFERENCES)
def test_the_interval_of_a_difference_covers_the_true_difference(scenario, n_seeds):
    assert coverage(I.difference, scenario, n_seeds) >= 0.93


def test_seeds_that_all_agree_still_leave_the_examples_uncertainty():
    """Three seeds at 1.000 on 512 examples: not the point 1.0, but the examples' interval."""
    e = I.estimate([np.ones(EXAMPLES)] * 3)
    assert e.mean == 1.0 and e.high == 1.0
    assert e.low == pytest.approx(0.025 ** (1 / (3 * EXAMPLES)))  # Clopper-Pearson, 1536 of 1536
    assert 0.99 < e.low < 0.999
    half = I.estimate([np.r_[np.ones(256), np.zeros(256)]] * 3)  # 0.5 in every seed
    assert half.low < 0.48 and half.high > 0.52
    d = I.difference([np.ones(EXAMPLES)] * 3, [np.ones(EXAMPLES)] * 3)
    assert d.mean == 0 and d.low < -0.001 and d.high > 0.001


def test_seeds_that_disagree_widen_the_interval_by_t_with_n_minus_1_degrees_of_freedom():
    means = [0.1, 0.5, 0.9]
    e = I.estimate([np.full(500, m) for m in means])
    half = stats.t.ppf(0.975, 2) * np.std(means, ddof=1) / np.sqrt(3)  # 4.30 * 0.231
    assert e.mean == pytest.approx(0.5)
    assert (e.low, e.high) == (pytest.approx(max(0, 0.5 - half)), pytest.approx(min(1, 0.5 + half)))
    d = I.difference([np.full(100, m) for m in (0.8, 0.9, 1.0)], [np.full(100, m) for m in (0.1, 0.2, 0.3)])
    se = np.sqrt(0.01 / 3 + 0.01 / 3)
    assert d.mean == pytest.approx(0.7)
    assert d.high - d.mean == pytest.approx(stats.t.ppf(0.975, 4) * se)  # Welch: 4 degrees of freedom


def test_a_contrast_of_four_configurations():
    """(a - b) - (c - d): the margin of one pair against another."""
    a, b, c, d = ([np.full(200, m + s) for s in (-0.02, 0, 0.02)] for m in (0.9, 0.3, 0.9, 0.8))
    e = I.contrast([(1, a), (-1, b), (-1, c), (1, d)])
    assert e.mean == pytest.approx(0.5) and e.low > 0.4 and e.high < 0.6 and e.n_seeds == 3


def test_fewer_than_three_seeds_decide_nothing():
    two = I.estimate([np.ones(500), np.ones(500)])
    assert two.n_seeds == 2 and not two.decisive
    assert I.at_least(two, 0.5) is None and I.at_most(two, 0.5) is None and I.above(two, 0.5) is None
    three = I.estimate([np.ones(500)] * 3)
    assert three.decisive and I.at_least(three, 0.5) is True
    assert "(n=3)" in three.text() and three.as_dict()["n_seeds"] == 3
    assert I.at_least(None, 0.5) is None


def test_verdict_helpers():
    high, low = [np.ones(200)] * 3, [np.zeros(200) + (np.arange(200) < 40)] * 3
    d = I.difference(high, low)
    assert d.mean == pytest.approx(0.8) and d.low > 0.7
    assert I.above(d, 0) is True and I.above(I.difference(low, high), 0) is False
    assert I.at_least(I.estimate(high), 0.95) is True
    assert I.at_least(I.estimate(low), 0.95) is False
    around = I.estimate([np.arange(100) < 95] * 3)  # 0.95 with an interval on both sides of it
    assert I.at_least(around, 0.95) is None and I.at_most(around, 0.95) is None
    assert I.at_most(I.estimate(low), 0.5) is True
    assert I.all_of([True, True]) is True and I.all_of([True, None]) is None
    assert I.all_of([None, False]) is False and I.all_of([]) is None


def test_a_seed_without_examples_is_an_error():
    with pytest.raises(ValueError, match="at least one test example"):
        I.estimate([[1.0], []])


# Beyond the regimes held to 93%: seed effects the ceiling clips (results/README.md quotes these).
STRESS = [(0.97, 0.03), (0.97, 0.1), (0.9, 0.1)]


def coverage_table(estimate=I.estimate, difference=I.difference) -> list[str]:
    """The figures results/README.md quotes: `python -m tests.test_intervals`."""
    lines = ["| interval of | scenario (mean, seed sd) | 3 seeds | 5 seeds |", "| --- | --- | --- | --- |"]
    kinds = (("mean", estimate, SCENARIOS + STRESS), ("difference", difference, DIFFERENCES))
    for kind, fn, scenarios in kinds:
        for scenario in scenarios:
            figures = [f"{coverage(fn, scenario, n):.3f}" for n in (3, 5)]
            lines.append(f"| {kind} | {scenario} | {' | '.join(figures)} |")
    return lines


if __name__ == "__main__":
    print("\n".join(coverage_table()))
