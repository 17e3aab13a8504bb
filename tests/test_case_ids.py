"""Case ids outlive the code that wrote them: every committed reference row's id (and training id) is
recomputed by the current code from the row's config columns, and found equal; a field added with a
default and declared AddedLater keeps every id, an undeclared one would not; the current code resumes the
committed CPU standard run and adds a seed without re-running a finished case."""

import functools
import shutil
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

from harness import runner, store
from harness.config import ADDED_LATER
from suites import accuracy, long_range
from suites.throughput import planning as throughput

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference"
CPU_STANDARD = REFERENCE / "cpu-standard-intel-xeon-2core"


def model_for(row: dict):
    """The Case model of a row's suite (and, in the accuracy suites, of its task)."""
    if row["suite"] == "throughput":
        return throughput.Case
    return accuracy.ExactnessCase if row["task"] == "exactness" else accuracy.TaskCase


@functools.cache
def committed_rows() -> list[dict]:
    runs = store.run_dirs([REFERENCE])
    rows = [row for run in runs for row in store.RunStore(run).table().to_pylist()]
    assert len(runs) >= 3 and len(rows) > 2000  # the CPU quick and standard runs and the frontier
    return rows


def test_every_committed_row_keeps_its_case_id_under_the_current_code():
    mismatched, trainings, kinds = [], 0, set()
    for row in committed_rows():
        case = model_for(row).from_row(row)
        if case.case_id != row["case_id"]:
            mismatched.append((row["case_id"], case.describe()))
        if row.get("training_id") is not None:  # the rows of one trained model share it (findings)
            trainings += 1
            assert case.training_id() == row["training_id"], case.describe()
        kinds.add((row["suite"], row.get("task") or row.get("kind"), row.get("criterion_holds")))
    assert mismatched == []
    assert trainings > 500  # every learned-task row
    # Rows written before criterion_holds existed (None), after it at its default (1, the quick run) and
    # with another value (3): the id rule must reproduce all three.
    assert {k[2] for k in kinds if k[1] in ("induction", "passkey", "mqar", "listops")} == {None, 1, 3}


def test_a_field_added_with_a_default_keeps_every_id_only_when_declared_added_later():
    case = accuracy.TaskCase.from_row(next(r for r in committed_rows() if r.get("task") == "mqar"))

    class Declared(accuracy.TaskCase):
        warmup_steps: Annotated[int, ADDED_LATER] = Field(0, ge=0)

    class Undeclared(accuracy.TaskCase):
        warmup_steps: int = Field(0, ge=0)

    fields = case.model_dump()
    assert Declared(**fields).case_id == case.case_id
    assert Declared(**fields, warmup_steps=100).case_id != case.case_id  # a new value: a new case
    assert Undeclared(**fields).case_id != case.case_id  # what the first test would catch
    assert Declared(**fields).training_id() == case.training_id()
    with pytest.raises(TypeError, match="without a default"):
        class NoDefault(accuracy.TaskCase):
            warmup_steps: Annotated[int, ADDED_LATER]


# What the grids gained after the committed CPU standard run was made (its NOTES.md says how far the
# top-up has got): seeds 3 and 4 of the experiments that trained 3, the time-invariant control, the
# correctness gate's checks and the grouped-KV checks. Resuming may leave only these to run; any other
# case left to run means an id the current code no longer recomputes.
FIRST_EXACTNESS_KINDS = ("random", "peaked", "near_duplicate", "long")
CONTROL = "mamba-lti"


def gained_since_the_run(case) -> bool:
    if case.variant == CONTROL:
        return True
    if isinstance(case, accuracy.TaskCase):
        return case.seed >= 3
    return case.input_kind not in FIRST_EXACTNESS_KINDS or case.kv_heads is not None  # or grouped KV


@pytest.mark.slow
def test_the_current_code_resumes_the_committed_run_and_adds_a_seed_without_rerunning_a_case(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(CPU_STANDARD, run, ignore=shutil.ignore_patterns("report", "frontier"))
    recorded = store.RunStore(run).statuses()
    for suite in (accuracy, long_range):
        planned = runner.unique(suite.plan(profile="standard", device="cpu"))
        todo = runner.cases_to_run(planned, recorded)
        assert [c.describe() for c in todo if not gained_since_the_run(c)] == [], suite.__name__
        more = runner.unique(suite.plan(profile="standard", device="cpu", seeds=6))
        todo_more = runner.cases_to_run(more, recorded)
        new_seed = [c for c in more if isinstance(c, accuracy.TaskCase) and c.seed == 5]
        assert new_seed and not {c.case_id for c in new_seed} & set(recorded)
        # exactly the sixth seed's cases beside what was left
        assert sorted(c.case_id for c in todo_more) == sorted(c.case_id for c in [*todo, *new_seed])
