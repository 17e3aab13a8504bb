"""Recipes fixed before results: what is hashed, what is not (an added seed), the diff a change shows."""

import json

from suites import accuracy as A
from suites import long_range, recipes


def test_every_learned_experiment_has_a_recipe_and_the_suites_expose_it():
    accuracy = A.recipes(A.plan("standard", "cpu"))
    reach = long_range.recipes(long_range.plan("standard", "cpu"))
    assert set(accuracy) == {"mqar_capacity", "selective_copying", "listops_lra"}  # Part A has none
    assert set(reach) == {"induction_extrapolation", "passkey_window"}
    copy = accuracy["selective_copying"]
    assert copy["seeds"] == 5 and len(copy["hash"]) == 16
    settings = copy["recipe"]["settings"]
    assert settings["max_steps"] == 4000 and settings["criterion"] == 0.99 and settings["batch_size"] == 32
    assert settings["learning_rates"] == [0.001, 0.003] and settings["task_params"] == {"n_memorize": 4,
                                                                                        "vocab": 16}
    assert {c["variant"] for c in copy["recipe"]["conditions"]} == {"mamba", "mamba-lti"}
    json.dumps(accuracy)  # environment.json holds it as is


def test_an_added_seed_is_not_a_change_and_a_budget_is():
    three = long_range.recipes(long_range.plan("standard", "cpu", seeds=3))
    five = long_range.recipes(long_range.plan("standard", "cpu", seeds=5))
    one = long_range.recipes(long_range.plan("standard", "cpu", seeds=1))  # every rate at seed 0, no sweep
    for name in three:
        assert three[name]["hash"] == five[name]["hash"] == one[name]["hash"]
        assert (three[name]["seeds"], five[name]["seeds"], one[name]["seeds"]) == (3, 5, 1)
    stricter = long_range.recipes(long_range.plan("standard", "cpu", criterion=0.9))
    assert all(stricter[name]["hash"] != three[name]["hash"] for name in three)
    diff = recipes.recipe_diff(three["passkey_window"]["recipe"], stricter["passkey_window"]["recipe"])
    assert diff == ["settings.criterion: 1.0 -> 0.9"]


def test_the_diff_names_added_and_removed_conditions_and_changed_settings():
    old = {"settings": {"max_steps": 2000, "lrs": [1e-3]}, "conditions": [{"variant": "a"}, {"variant": "b"}]}
    new = {"settings": {"max_steps": 4000, "lrs": [1e-3, 3e-3]}, "conditions": [{"variant": "a"},
                                                                                {"variant": "c"}]}
    assert recipes.recipe_diff(old, new) == [
        '- conditions {"variant": "b"}', '+ conditions {"variant": "c"}',
        "settings.lrs: [0.001] -> [0.001, 0.003]", "settings.max_steps: 2000 -> 4000"]
    assert recipes.recipe_diff(old, old) == []


def test_changes_read_from_a_fake_environment():
    first = {"settings": {"max_steps": 2000}, "conditions": []}
    environment = {"recipes": {"selective_copying": {"recipe": first, "hash": recipes.recipe_hash(first)}},
                   "recipe_changes": {"selective_copying": [
                       {"recipe": {"settings": {"max_steps": 3000}, "conditions": []}, "hash": "x"},
                       {"recipe": {"settings": {"max_steps": 4000}, "conditions": []}, "hash": "y"}]}}
    changed = recipes.changes(environment, "selective_copying")
    assert changed == {"label": "recipe changed after results", "first_hash": recipes.recipe_hash(first),
                       "hashes": ["x", "y"], "diff": ["settings.max_steps: 2000 -> 4000"]}
    assert recipes.changes(environment, "mqar_capacity") is None
    assert recipes.changes({"recipes": environment["recipes"]}, "selective_copying") is None
    assert recipes.changes(None, "selective_copying") is None


def test_cases_outside_an_experiment_have_no_recipe():
    quick = A.plan("quick", "cpu", variants=["vanilla"])
    assert A.recipes(quick) == {}
