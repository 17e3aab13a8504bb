"""`attnbench merge OUT RUN...`: runs measured apart (CI shards, several machines) as one run directory.

Rows are read from either layout of the store and copied as they are (every value and type), then OUT is
compacted like a finished run. A case recorded by several runs keeps one row: an `ok` row before a failed
one, then the one that finished last (the first run named on a tie). Runs of different commits or torch
versions measured different code, so they are refused unless `allow_mixed`. OUT's environment.json keeps
what every run agrees on, lists the values of what differs, and names its sources under `merged_from`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import store

MUST_MATCH = ("commit", "torch")  # differing values mean different code was measured
OWN_KEYS = ("schema_version", "merged_from")  # written by the store and by merge, not carried over
# Keys whose value is a map by experiment (or a list of machines): runs of one plan split by experiment
# recorded parts of it, so their union is what they agree on.
BY_NAME = ("recipes", "recipe_changes", "resumed_on")
SOURCE_FACTS = ("commit", "torch", "device", "device_name", "driver", "hostname", "shard")


@dataclass
class Kept:
    """The row a merge keeps of one case: which run, where in its table, and why it ranks."""

    run: Path
    index: int
    rank: tuple[bool, str]  # larger is preferred: an ok row, then the latest
    device_name: str | None


@dataclass
class Merged:
    out: Path
    rows: int
    duplicates: int  # rows of a case that another run's row replaced
    sources: list[dict[str, Any]]
    devices: list[str] = field(default_factory=list)  # distinct device names among the kept rows


def environment_of(run: Path) -> dict[str, Any]:
    path = run / store.ENVIRONMENT
    if not path.is_file():
        raise ValueError(f"{run} has no {store.ENVIRONMENT}: not a run directory written by attnbench run")
    return json.loads(path.read_text())


def check_compatible(environments: dict[Path, dict[str, Any]]) -> None:
    for key in MUST_MATCH:
        seen: dict[Any, Path] = {}
        for run, environment in environments.items():
            seen.setdefault(environment.get(key), run)
        if len(seen) > 1:
            (a, run_a), (b, run_b) = list(seen.items())[:2]
            raise ValueError(f"runs of different {key}s ({run_a}: {a}, {run_b}: {b}); merge runs of one "
                             f"{key}, or pass --allow-mixed")


def merged_environment(environments: dict[Path, dict[str, Any]], kept: dict[Path, int]) -> dict[str, Any]:
    """What every run agrees on; for the rest the distinct values; and the sources, merged ones unfolded."""
    envs = list(environments.values())
    keys = [k for k in dict.fromkeys(k for e in envs for k in e) if k not in OWN_KEYS]
    combined: dict[str, Any] = {"schema_version": store.SCHEMA_VERSION}
    for key in keys:
        values = list({json.dumps(v, sort_keys=True): v for e in envs for v in _values(e, key)}.values())
        union = _union_of_parts(values) if key in BY_NAME and len(values) > 1 else None
        combined[key] = values[0] if len(values) == 1 else values if union is None else union
    sources: dict[tuple, dict[str, Any]] = {}
    for run, environment in environments.items():
        here = {"run": str(run), "rows_kept": kept.get(run, 0),
                **{k: environment.get(k) for k in SOURCE_FACTS if k in environment}}
        # Copies of one merged run (topped up apart, merged again) share their sources: each listed once.
        for source in [{**s, "via": str(run)} for s in environment.get("merged_from", [])] or [here]:
            sources.setdefault((source.get("run"), source.get("commit"), source.get("at")), source)
    combined["merged_from"] = list(sources.values())
    return combined


def _union_of_parts(values: list[Any]) -> dict[str, Any] | list[Any] | None:
    """Runs that each recorded other experiments (or other machines) agree where they overlap: their
    union. None where two runs hold different values under one name (a real difference, kept listed)."""
    present = [v for v in values if v]
    if not present:  # empty or absent everywhere: the empty value a run wrote, if any
        return next((v for v in values if v is not None), None)
    if all(isinstance(v, list) for v in present):
        return list({json.dumps(x, sort_keys=True): x for v in present for x in v}.values())
    if not all(isinstance(v, dict) for v in present):
        return None
    union: dict[str, Any] = {}
    for value in present:
        for name, part in value.items():
            if name in union and union[name] != part:
                longer = _extension(union[name], part)
                if longer is None:
                    return None
                part = longer
            union[name] = part
    return union


def _extension(a: Any, b: Any) -> list | None:
    """The longer of two lists where one begins with the other (a run that appended a change to the
    history both had), else None."""
    if not (isinstance(a, list) and isinstance(b, list)):
        return None
    short, long = sorted((a, b), key=len)
    return long if long[:len(short)] == short else None


def _values(environment: dict[str, Any], key: str) -> list[Any]:
    """The values an environment holds for key: a merged run's list of distinct values unfolded."""
    value = environment.get(key)
    return value if "merged_from" in environment and isinstance(value, list) else [value]


def merge(out: str | Path, runs: list[str | Path], allow_mixed: bool = False) -> Merged:
    out = Path(out)
    dirs = []
    for path in runs:
        found = store.run_dirs([path])  # FileNotFoundError names a missing path
        if not found:
            raise ValueError(f"{path} holds no run (no records/ at or below it)")
        dirs += [d for d in found if d not in dirs]
    if any(d.resolve() == out.resolve() for d in dirs):
        raise ValueError(f"{out} is one of the runs to merge; merge into a new directory")
    if (out / store.RECORDS).exists() or (out / store.ENVIRONMENT).exists():
        raise ValueError(f"{out} already holds a run; merge into a new directory")
    environments = {run: environment_of(run) for run in dirs}
    if not allow_mixed:
        check_compatible(environments)
    tables = {run: store.RunStore(run).table() for run in dirs}
    best: dict[str, Kept] = {}
    total = 0
    for run, table in tables.items():
        for index, row in enumerate(table.select(
                [c for c in ("case_id", "status", "finished_at", "device_name") if c in table.column_names]
        ).to_pylist()):
            total += 1
            kept = Kept(run, index, (row["status"] == "ok", str(row.get("finished_at") or "")),
                        row.get("device_name"))
            if row["case_id"] not in best or kept.rank > best[row["case_id"]].rank:
                best[row["case_id"]] = kept
    rows_kept: dict[Path, int] = {}
    target = store.RunStore(out)
    with target.lock("attnbench merge"):
        for kept in (best[case_id] for case_id in sorted(best)):
            row = tables[kept.run].slice(kept.index, 1)
            target.write_record(row.select([c for c in row.column_names if row.column(c).null_count == 0]))
            rows_kept[kept.run] = rows_kept.get(kept.run, 0) + 1
        target.compact()
        environment = merged_environment(environments, rows_kept)
        store.write_json(out / store.ENVIRONMENT, environment)
    devices = sorted({k.device_name for k in best.values() if k.device_name})
    return Merged(out, len(best), total - len(best), environment["merged_from"], devices)
