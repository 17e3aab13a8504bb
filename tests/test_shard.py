"""--shard I/N: every case in exactly one part, whatever the plan's order; OOM groups and trained models
whole; parts balanced by the suite's case_cost; bad input is one line and exit code 2."""

import random

import pytest

from harness import shard
from harness.shard import Shard
from suites import accuracy, long_range
from suites.throughput import planning
from tests import test_report_fixtures as fx
from tests.fake_suite import Case


def quick_plans():
    return {"throughput": (planning.plan("quick", "cpu"), planning.case_cost),
            "accuracy": (accuracy.plan("quick", "cpu"), accuracy.case_cost),
            "long-range": (long_range.plan("quick", "cpu"), long_range.case_cost)}


@pytest.mark.parametrize("text, expected", [("1/1", (1, 1)), ("2/4", (2, 4)), (" 3 / 3 ", (3, 3))])
def test_parse(text, expected):
    parsed = Shard.parse(text)
    assert (parsed.index, parsed.count) == expected and str(parsed) == f"{expected[0]}/{expected[1]}"


@pytest.mark.parametrize("text, says", [("3/2", "between 1 and N"), ("0/2", "between 1 and N"),
                                        ("0/0", "at least 1"), ("a/b", "I/N"), ("1", "I/N"),
                                        ("-1/2", "I/N"), ("1/2/3", "I/N"), ("", "I/N")])
def test_parse_rejects_with_the_fix(text, says):
    with pytest.raises(ValueError, match=says):
        Shard.parse(text)


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_case_in_exactly_one_part_in_plan_order(count):
    for name, (cases, cost) in quick_plans().items():
        parts = shard.partition(cases, count, cost)
        assert len(parts) == count
        ids = [c.case_id for part in parts for c in part]
        assert sorted(ids) == sorted(c.case_id for c in cases), name
        position = {c.case_id: i for i, c in enumerate(cases)}
        for part in parts:
            assert [position[c.case_id] for c in part] == sorted(position[c.case_id] for c in part)


def test_the_partition_does_not_depend_on_the_plan_order():
    cases, cost = quick_plans()["accuracy"]
    shuffled = list(cases)
    random.Random(0).shuffle(shuffled)
    for count in (2, 5):
        before = [{c.case_id for c in part} for part in shard.partition(cases, count, cost)]
        after = [{c.case_id for c in part} for part in shard.partition(shuffled, count, cost)]
        assert before == after


def test_oom_groups_and_trained_models_stay_in_one_part():
    for name, (cases, cost) in quick_plans().items():
        part_of = {c.case_id: i for i, part in enumerate(shard.partition(cases, 4, cost)) for c in part}
        by_group, by_model = {}, {}
        for case in cases:
            by_group.setdefault((case.suite, case.oom_key()[0]), set()).add(part_of[case.case_id])
            if isinstance(case, accuracy.TaskCase):
                by_model.setdefault(case.training_key(), set()).add(part_of[case.case_id])
        assert all(len(parts) == 1 for parts in by_group.values()), name
        assert all(len(parts) == 1 for parts in by_model.values()), name
        assert len(set(part_of.values())) == 4, name  # and all four parts are used


def test_cases_that_choose_their_rate_share_a_part_with_their_sweep():
    """Seeds after the first read the sweep's rows from their own run (accuracy.needs, sweep_rows)."""
    cases = [c for c in long_range.plan("standard", "cpu") if c.lrs]
    part_of = {c.case_id: i for i, part in enumerate(shard.partition(cases, 2, long_range.case_cost))
               for c in part}
    choosers = [c for c in cases if c.lr is None]
    assert choosers and len(set(part_of.values())) == 2
    for case in choosers:
        sweep = {part_of[case_id] for case_id in accuracy.needs(case)}
        assert sweep == {part_of[case.case_id]}, case.describe()


def test_parts_are_balanced_by_cost_within_the_largest_group():
    for name, (cases, cost) in quick_plans().items():
        groups = {}
        for case in cases:
            groups.setdefault(shard.group_of(case), []).append(case)
        largest = max(shard.unit_cost(g, cost) for g in groups.values())
        loads = [shard.unit_cost(part, cost) for part in shard.partition(cases, 3, cost)]
        assert max(loads) - min(loads) <= largest + 1e-9, (name, loads, largest)


def test_cost_moves_cases_between_parts():
    cases = [Case(action="ok", seq_len=n) for n in (8, 16, 32, 64)]  # one OOM group each (action, variant)
    cases += [Case(action="slow", seq_len=8), Case(action="nan", seq_len=8)]
    expensive = {"slow": 10.0}
    parts = shard.partition(cases, 2, lambda c: expensive.get(c.action, 1.0))
    slow_part = next(p for p in parts if any(c.action == "slow" for c in p))
    assert [c.action for c in slow_part] == ["slow"]  # 10 against 4 + 1: alone in its part


def test_a_bad_cost_is_an_error_naming_the_case():
    with pytest.raises(ValueError, match="finite number"):
        shard.partition([Case(seq_len=8)], 2, lambda c: float("nan"))


@pytest.mark.parametrize("value", ["3/2", "0/0", "a/b", "2/0"])
def test_shard_bad_input_is_one_line_and_exit_code_2(value, tmp_path, monkeypatch, capsys):
    code, _, err = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cpu",
                              "--shard", value, "--out", tmp_path / "run", "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("attnbench: error: --shard")
    assert not (tmp_path / "run").exists()
