"""The learning-rate choice of the learned tasks, shared by the suites that train (suites.accuracy) and the
findings that read their rows (suites.findings): a configuration trains at each rate of its sweep at
SWEEP_SEED, and the other seeds train at the rate `choose_lr` picks from those runs' validation figures."""

from __future__ import annotations

SWEEP_SEED = 0  # the seed that trains at every learning rate of a sweep


def choose_lr(sweep: list[tuple[float, float, int | None]]) -> float:
    """The learning rate of a sweep judged on validation data alone: (lr, validation accuracy, steps to
    the criterion or None). Runs that reached the criterion win, the fewest steps first; among the others
    the highest validation accuracy; ties go to the smaller rate."""
    def rank(run):
        lr, accuracy, steps = run
        return (steps is None, steps or 0, -accuracy, lr)
    return min(sweep, key=rank)[0]
