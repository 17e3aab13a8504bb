"""The suite protocol (harness.suite): what a suite must declare, the defaults of what it may; the RunContext
its cases run in; and the experiment recipes the runner records in environment.json."""

import hashlib
import json
import pickle
import types

import pytest

from harness import plugins, runner, store
from harness.context import RunContext
from harness.suite import Suite, SuiteError, load_suite
from tests import fake_suite
from tests.fake_suite import Case

SUITE = "tests.fake_suite"


def module(name="my_suite", **members) -> types.ModuleType:
    m = types.ModuleType(name)
    vars(m).update(members)
    return m


def complete(**members) -> dict:
    return {"plan": lambda profile, device, **kw: [], "run_case": lambda case, context: {}, "TIMEOUT_S": 60,
            "case_cost": lambda case: 1.0, "OPTIONS": (), **members}


# --- the protocol ---------------------------------------------------------------------------------------

def test_a_suite_lacking_required_members_is_an_error_naming_each():
    with pytest.raises(SuiteError, match=r"^my_suite lacks run_case, case_cost, OPTIONS \(a suite declares"):
        Suite.of(module(plan=print, TIMEOUT_S=1.0))


@pytest.mark.parametrize("members, says", [
    ({"TIMEOUT_S": 0}, "TIMEOUT_S"), ({"TIMEOUT_S": True}, "TIMEOUT_S"), ({"TIMEOUT_S": "300"}, "TIMEOUT_S"),
    ({"OPTIONS": "seeds"}, "OPTIONS"), ({"OPTIONS": (1,)}, "OPTIONS"), ({"run_case": 3}, "run_case"),
    ({"recipes": None}, "recipes"), ({"summarize": "yes"}, "summarize"),
])
def test_a_malformed_member_is_an_error_naming_it(members, says):
    with pytest.raises(SuiteError, match=f"my_suite: malformed {says}"):
        Suite.of(module(**complete(**members)))


def test_capabilities_a_suite_does_not_declare_get_their_stated_defaults():
    suite = Suite.of(module(**complete()))
    assert (suite.timeout_s, suite.options, suite.module) == (60.0, (), "my_suite")
    assert suite.find_max_n is None and suite.import_benchmark_json is None
    assert suite.recipes([Case()]) == {} and suite.needs(Case()) == []
    assert suite.summarize("out", None) is None
    declared = Suite.of(module(**complete(OPTIONS=["seeds"], find_max_n=print, needs=lambda c: ["x"])))
    assert declared.options == ("seeds",) and declared.find_max_n is print and declared.needs(None) == ["x"]
    assert Suite.of(module(**complete(find_max_n=None))).find_max_n is None  # declared as not offered


def test_every_suite_of_attnbench_keeps_the_protocol():
    assert plugins.suite_problems() == []
    assert plugins.suite("accuracy").options == ("seeds", "findings", "criterion", "compiled")
    assert plugins.suite("long-range").options == ("seeds", "findings", "criterion")
    throughput = plugins.suite("throughput")
    assert throughput.options == ("kv_heads", "model", "compiled", "lengths")
    assert throughput.find_max_n is not None
    assert throughput.import_benchmark_json is not None
    assert load_suite(SUITE).recipes is fake_suite.recipes


# --- the run context ------------------------------------------------------------------------------------

def test_a_context_finds_rows_where_it_can_and_its_cache_never_travels(tmp_path):
    run = store.RunStore(tmp_path)
    run.open({"device": "cpu", "device_name": "CPU"})
    a, b, c = (Case(seq_len=n) for n in (8, 16, 32))
    for case in (a, b):
        run.write({"case_id": case.case_id, **case.flat(), "status": "ok", "value": float(case.seq_len)})
    here = RunContext(tmp_path, "run-1")
    found = here.rows([a.case_id, c.case_id, a.case_id])
    assert {k: v["value"] for k, v in found.items()} == {a.case_id: 8.0}
    here.record(c, "ok", "", {"value": 3.0})  # the run directory holds it (the runner writes it)
    assert c.case_id not in here.rows([c.case_id])
    node = here.handing([b.case_id, c.case_id])  # what a Ray node gets: the rows recorded so far
    assert node.run_dir is None and node.run_id == "run-1"
    assert set(node.rows([a.case_id, b.case_id])) == {b.case_id}
    node.record(c, "ok", "", {"value": 3.0})  # no run directory: the node keeps the row of what it ran
    assert node.rows([c.case_id])[c.case_id]["value"] == 3.0
    assert node.rows([c.case_id])[c.case_id]["action"] == "ok"  # the case's config columns too
    node.cache["model"] = object()
    travelled = pickle.loads(pickle.dumps(node))
    assert travelled.cache == {} and "model" in node.cache
    assert travelled.rows([b.case_id, c.case_id]).keys() == {b.case_id, c.case_id}


def test_a_case_reads_the_rows_it_needs_through_its_context(tmp_path):
    earlier = Case(seq_len=8)
    reader = Case(action="read_rows", seq_len=16, params={"needs": [earlier.case_id, "no-such-case"]})
    runner.run([earlier, reader], SUITE, tmp_path, progress=False)
    rows = store.load(tmp_path).set_index("case_id")
    assert list(rows.loc[reader.case_id, "found"]) == [16.0]


# --- recipes --------------------------------------------------------------------------------------------

def sha1(recipe) -> str:
    return hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def run_with(recipes, out, monkeypatch, cases=()):
    """A run of `cases` (none: the recipes are recorded all the same) by a suite with these recipes."""
    monkeypatch.setenv("ATTNBENCH_FAKE_RECIPE", json.dumps(recipes))
    runner.run(list(cases), SUITE, out, progress=False)
    return store.RunStore(out).environment()


def test_recipes_are_recorded_with_their_hash_in_a_run_s_environment(tmp_path, monkeypatch):
    recipe = {"grid": {"lengths": [8, 16]}, "seeds": 3, "lrs": [1e-3, 3e-3]}
    environment = run_with({"mqar": recipe, "passkey": {"depths": (0.0, 1.0)}}, tmp_path, monkeypatch,
                           [Case(seq_len=8)])
    assert environment["recipes"]["mqar"] == {"recipe": recipe, "hash": sha1(recipe)}
    assert environment["recipes"]["passkey"] == {"recipe": {"depths": [0.0, 1.0]},
                                                 "hash": sha1({"depths": [0.0, 1.0]})}
    assert "recipe_changes" not in environment and len(store.RunStore(tmp_path).statuses()) == 1
    assert "recipes" not in run_with({}, tmp_path / "plain", monkeypatch)  # no recipes: nothing recorded


def test_a_changed_recipe_replaces_the_first_while_the_run_has_no_rows(tmp_path, monkeypatch):
    run_with({"mqar": {"seeds": 3}}, tmp_path, monkeypatch)
    environment = run_with({"mqar": {"seeds": 5}}, tmp_path, monkeypatch)
    assert environment["recipes"]["mqar"] == {"recipe": {"seeds": 5}, "hash": sha1({"seeds": 5})}
    assert "recipe_changes" not in environment


def test_a_changed_recipe_of_a_run_with_rows_is_appended_and_the_first_kept(tmp_path, monkeypatch):
    first, second = {"seeds": 3, "lrs": [1e-3]}, {"seeds": 5, "lrs": [1e-3]}
    run_with({"mqar": first, "passkey": {"depths": [0.5]}}, tmp_path, monkeypatch)
    case = Case(seq_len=8)  # a row of the first recipe (written as the runner would)
    store.RunStore(tmp_path).write({"case_id": case.case_id, **case.flat(), "status": "ok", "reason": ""})
    environment = run_with({"mqar": second, "passkey": {"depths": [0.5]}}, tmp_path, monkeypatch)
    assert environment["recipes"]["mqar"] == {"recipe": first, "hash": sha1(first)}
    [change] = environment["recipe_changes"]["mqar"]
    assert change["recipe"] == second and change["hash"] == sha1(second) and change["at"]
    assert "passkey" not in environment["recipe_changes"]  # unchanged
    again = run_with({"mqar": second}, tmp_path, monkeypatch)  # resumed with the same change: nothing new
    assert again["recipe_changes"]["mqar"] == [change]
    back = run_with({"mqar": first}, tmp_path, monkeypatch)  # back to the first: a change of its own
    assert [c["hash"] for c in back["recipe_changes"]["mqar"]] == [sha1(second), sha1(first)]
    assert back["recipes"]["mqar"]["hash"] == sha1(first)
