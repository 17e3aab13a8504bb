"""Each learned experiment's recipe, recorded before its first result, so that a changed one shows.

`recipes(cases)` describes every experiment (suites.grids' `experiment`) among a plan's cases: the
settings all its cases share (task and its options, model shape, budgets: batch, step cap, time budget;
criteria: criterion, the validations it must hold for, validation cadence and size; test size; learning
rates) and the conditions that vary (variant and its parameters, widths, lengths, pairs, depths). The
runner writes them into the run's environment.json before the first case (`recipes: {experiment:
{"recipe", "hash", "seeds"}}`); a recipe that differs once rows exist is appended to
`recipe_changes[experiment]`, the first kept. The seed count is recorded beside the recipe, not in what
is hashed: an added seed is not a change. A plan filtered by variant or length describes only what it
plans, a recipe of its own.

`recipe_diff(old, new)` lists the differences one line each; `changes(environment, experiment)` is what
the findings show for an experiment whose recipe changed after results ("recipe changed after results").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

# Per case, not per recipe: the seed (counted beside the recipe), the rate a case trains at (the sweep's
# rates are the recipe's `learning_rates`), the experiment (the recipe's name).
NOT_RECIPE = ("seed", "lr", "lrs", "experiment")
CHANGED_LABEL = "recipe changed after results"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(_canonical(recipe).encode()).hexdigest()[:16]


def recipe_of(cases: list) -> dict:
    """The recipe of one experiment's cases: {"settings": shared fields and learning rates,
    "conditions": the distinct combinations of the fields that vary}."""
    dumps = [case.model_dump(mode="json") for case in cases]
    rates = sorted({float(r) for d in dumps for r in [*(d.get("lrs") or ()), d.get("lr")] if r is not None})
    entries = [{k: v for k, v in d.items() if k not in NOT_RECIPE} for d in dumps]
    keys = sorted({k for e in entries for k in e})
    shared = {k: entries[0].get(k) for k in keys
              if all(_canonical(e.get(k)) == _canonical(entries[0].get(k)) for e in entries)}
    conditions = sorted({_canonical({k: e.get(k) for k in keys if k not in shared}) for e in entries})
    return {"settings": {**shared, "learning_rates": rates},
            "conditions": [json.loads(c) for c in conditions]}


def recipes(cases: Iterable) -> dict[str, dict]:
    """{experiment: {"recipe": ..., "hash": ..., "seeds": distinct seeds}} for the cases that belong to
    an experiment (others have none)."""
    by_experiment: dict[str, list] = {}
    for case in cases:
        name = getattr(case, "experiment", None)
        if name:
            by_experiment.setdefault(name, []).append(case)
    out = {}
    for name, group in sorted(by_experiment.items()):
        recipe = recipe_of(group)
        out[name] = {"recipe": recipe, "hash": recipe_hash(recipe), "seeds": len({c.seed for c in group})}
    return out


def _flat(value: Any, path: str = "") -> dict[str, str]:
    """Leaves of nested dicts as path -> canonical JSON; a list of dicts is a set of its members."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {f"{path}[{_canonical(v)}]": "present" for v in value}
    return {path: _canonical(value)}


def recipe_diff(old: dict, new: dict) -> list[str]:
    """One line per difference: `settings.max_steps: 2000 -> 4000`, `+ conditions {...}`, `- conditions
    {...}`."""
    before, after = _flat(old), _flat(new)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) == after.get(key):
            continue
        if "[" in key and key.endswith("]"):
            base, member = key.split("[", 1)
            lines.append(f"{'+' if key in after else '-'} {base} {member[:-1]}")
        else:
            lines.append(f"{key}: {before.get(key, '(absent)')} -> {after.get(key, '(absent)')}")
    return lines


def changes(environment: dict | None, experiment: str) -> dict | None:
    """What changed in an experiment's recipe after its first recording: None when nothing did, else
    {"label", "first_hash", "hashes", "diff"} (the diff from the first recipe to the latest)."""
    if not environment:
        return None
    later = (environment.get("recipe_changes") or {}).get(experiment) or []
    first = (environment.get("recipes") or {}).get(experiment)
    if not later or not first:
        return None
    latest = later[-1]
    return {"label": CHANGED_LABEL, "first_hash": first.get("hash"),
            "hashes": [c.get("hash") for c in later],
            "diff": recipe_diff(first.get("recipe", {}), latest.get("recipe", {}))}
