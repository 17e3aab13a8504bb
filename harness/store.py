"""The results store: `results/<run-id>/` holds environment.json and one Parquet file per finished case.

One file per case makes every write atomic (temp file, fsync, rename): a run killed at any moment,
SIGKILL included, loses at most the case in flight, and a re-run skips the cases already on disk.
The schema is documented in results/README.md; `load()` reads one run or many into one DataFrame.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
RECORDS = "records"
ENVIRONMENT = "environment.json"
STATUSES = ("ok", "unsupported", "oom", "skipped", "timeout", "nonfinite", "error")


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    """A run directory. Rows are written as cases finish; `finished()` tells a resumed run what to skip."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.records = self.root / RECORDS

    def open(self, environment: dict[str, Any]) -> None:
        """Create the run, or check that a resumed one was measured on the same kind of machine."""
        env_path = self.root / ENVIRONMENT
        if env_path.exists():
            previous = json.loads(env_path.read_text())
            for key in ("device", "device_name"):
                if previous.get(key) != environment.get(key):
                    raise ValueError(
                        f"{self.root} holds a run on {previous.get('device_name')} "
                        f"({previous.get('device')}); "
                        f"this one is on {environment.get('device_name')}: pass a new --out"
                    )
            return
        payload = {"schema_version": SCHEMA_VERSION, **environment}
        _atomic_write(env_path, lambda f: f.write(json.dumps(payload, indent=2).encode()))

    def environment(self) -> dict[str, Any]:
        return json.loads((self.root / ENVIRONMENT).read_text())

    def update_environment(self, **fields: Any) -> None:
        """Add fields to an opened run's environment.json (the doctor's findings, say)."""
        payload = {**self.environment(), **fields}
        _atomic_write(self.root / ENVIRONMENT, lambda f: f.write(json.dumps(payload, indent=2).encode()))

    def finished(self) -> set[str]:
        if not self.records.is_dir():
            return set()
        return {p.stem for p in self.records.glob("*.parquet")}

    def write(self, row: dict[str, Any]) -> Path:
        path = self.records / f"{row['case_id']}.parquet"
        # Nested dicts have no stable Parquet type (an empty one has none at all): store them as JSON.
        row = {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in row.items()}
        frame = pd.DataFrame([{"schema_version": SCHEMA_VERSION, **row}])
        # One-row files: pandas' metadata and column statistics would be most of each file.
        table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
        _atomic_write(path, lambda f: pq.write_table(table, f, write_statistics=False))
        return path


def run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories at or below the given paths (a path may be one run or a folder of runs)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no results at {p}")
        if (p / RECORDS).is_dir():
            found.append(p)
        else:
            found.extend(sorted(d.parent for d in p.rglob(RECORDS) if d.is_dir()))
    return found


def load(*paths: str | Path) -> pd.DataFrame:
    """All rows of the given runs as one DataFrame, with a `run_dir` column naming each row's run."""
    frames = []
    for run in run_dirs(paths):
        for file in sorted((run / RECORDS).glob("*.parquet")):
            frame = pd.read_parquet(file)
            frame["run_dir"] = str(run)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["schema_version", "case_id", "suite", "variant", "status", "run_dir"])
    frames = [f.dropna(axis=1, how="all") for f in frames]  # all-None columns would widen dtypes to object
    return pd.concat(frames, ignore_index=True, sort=False)
