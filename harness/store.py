"""The results store: `results/<run-id>/` holds environment.json and one Parquet file per finished case.

One file per case makes every write atomic (temp file, fsync, rename): a run killed at any moment,
SIGKILL included, loses at most the case in flight, and a re-run skips the cases already on disk.
Every file is created with the mode the umask gives (0644 under the usual 022), like any other tool's.

Every record is checked on load against `REQUIRED` (a declared pyarrow schema): a file that is not
Parquet, cannot be read, or lacks the columns every row has is moved to `records/.corrupt/`, named in
one warning, and its case runs again on resume. A run directory is held by one process at a time
(`RunStore.lock`). The schema is documented in results/README.md; `load()` reads one run or many into
one DataFrame.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import RunDirError

SCHEMA_VERSION = 1
RECORDS = "records"
CORRUPT = ".corrupt"  # under records/: files that failed validation, kept for inspection
ENVIRONMENT = "environment.json"
LOCK = ".lock"
REPORT = "report"
STATUSES = ("ok", "unsupported", "oom", "skipped", "timeout", "nonfinite", "error")

# The columns every row has, with their Parquet types; suites add their own beside these.
REQUIRED = pa.schema([
    pa.field("schema_version", pa.int64(), nullable=False),
    pa.field("case_id", pa.string(), nullable=False),
    pa.field("suite", pa.string(), nullable=False),
    pa.field("variant", pa.string(), nullable=False),
    pa.field("device", pa.string(), nullable=False),
    pa.field("dtype", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
])
# Columns the runner always writes, typed as declared when a row has them (rows written by hand may not).
TYPED = pa.schema([
    pa.field("reason", pa.string()),
    pa.field("started_at", pa.string()),
    pa.field("finished_at", pa.string()),
])

log = logging.getLogger("attnbench")


class CorruptFile(Exception):
    """A file of a run that cannot be read or does not hold what it should; the message says why."""


# --- files --------------------------------------------------------------------------------------------

def atomic_write(path: str | Path, write: Callable[[Any], None] | bytes) -> Path:
    """Write a file whole or not at all: a temp file beside it, fsync, rename.

    The temp file is created with mode 0666 minus the umask, as `open()` would, so every file of a run
    gets the same permissions (mkstemp's 0600 would not).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, bytes):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    return atomic_write(path, json.dumps(payload, indent=2, sort_keys=True).encode())


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file; CorruptFile (naming the file) when it is unreadable or not an object."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorruptFile(f"{path}: {_first_line(e)}") from None
    if not isinstance(payload, dict):
        raise CorruptFile(f"{path}: a JSON {type(payload).__name__}, not an object")
    return payload


def read_json_cache(path: str | Path) -> dict[str, Any]:
    """A per-run cache file in a run directory (e.g. peak_matmul.json): {} when missing; a corrupt one is
    moved to records/.corrupt/ with a warning and reads as {} (the figures are measured again)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return read_json(path)
    except CorruptFile as e:
        quarantine(path, path.parent / RECORDS / CORRUPT, f"corrupt {e}; measured again")
        return {}


def quarantine(path: Path, corrupt_dir: Path, why: str) -> Path | None:
    """Move a corrupt file into corrupt_dir (never overwriting an earlier one) and say so in one warning.
    Returns the new path, or None when the move failed (a read-only run is then only warned about)."""
    try:
        corrupt_dir.mkdir(parents=True, exist_ok=True)
        target = corrupt_dir / path.name
        while target.exists():
            target = corrupt_dir / f"{path.name}.{secrets.token_hex(2)}"
        os.replace(path, target)
    except OSError as e:
        log.warning("%s; could not move it aside (%s): it is left out", why, _first_line(e))
        return None
    log.warning("%s; moved to %s", why, target)
    return target


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --- records ------------------------------------------------------------------------------------------

def _arrow_type_ok(actual: pa.DataType, field: pa.Field) -> bool:
    if pa.types.is_null(actual):  # every value missing
        return field.nullable
    if pa.types.is_string(field.type):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    return pa.types.is_integer(actual) if pa.types.is_integer(field.type) else actual == field.type


def validate_record(table: pa.Table, file: Path) -> None:
    """Raise CorruptFile unless the table is one row that has every REQUIRED column (and any TYPED one),
    typed as declared, a known status, this schema version, and the case_id its file is named after."""
    if table.num_rows != 1:
        raise CorruptFile(f"{file}: {table.num_rows} rows, a record holds one")
    for field in [*REQUIRED, *(f for f in TYPED if f.name in table.column_names)]:
        if field.name not in table.column_names:
            raise CorruptFile(f"{file}: no {field.name!r} column (not a record of this store)")
        actual = table.schema.field(field.name).type
        if not _arrow_type_ok(actual, field):
            raise CorruptFile(f"{file}: column {field.name!r} is {actual}, expected {field.type}")
        if not field.nullable and table.column(field.name).null_count:
            raise CorruptFile(f"{file}: column {field.name!r} is empty")
    values = table.select(["schema_version", "case_id", "status"]).to_pylist()[0]
    if values["schema_version"] != SCHEMA_VERSION:
        raise CorruptFile(f"{file}: schema_version {values['schema_version']}, this attnbench reads "
                          f"{SCHEMA_VERSION}")
    if values["status"] not in STATUSES:
        raise CorruptFile(f"{file}: unknown status {values['status']!r}")
    if values["case_id"] != file.stem:
        raise CorruptFile(f"{file}: holds case {values['case_id']!r}, not the case it is named after")


def read_record(file: Path) -> pa.Table:
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException, ValueError) as e:  # not Parquet, truncated, unreadable
        raise CorruptFile(f"{file}: unreadable ({_first_line(e)})") from None
    validate_record(table, file)
    return table


def read_records(run: Path, columns: list[str] | None = None) -> list[pa.Table]:
    """Every valid record of a run; corrupt ones are quarantined (see `quarantine`)."""
    tables = []
    records = run / RECORDS
    for file in sorted(records.glob("*.parquet")) if records.is_dir() else []:
        try:
            table = read_record(file)
        except CorruptFile as e:
            quarantine(file, records / CORRUPT, f"corrupt record {e}; its case runs again on resume")
            continue
        tables.append(table.select(columns) if columns else table)
    return tables


# --- a run directory ----------------------------------------------------------------------------------

class RunStore:
    """A run directory. Rows are written as cases finish; `statuses()` tells a resumed run what ran."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.records = self.root / RECORDS

    @contextlib.contextmanager
    def lock(self, command: str | None = None) -> Iterator[None]:
        """Hold the run directory for this process (an advisory flock on OUT/.lock).

        The kernel releases the lock when its process ends, however it ends, so a lock left by a
        killed run is simply taken over. A run directory held by a live process is a RunDirError that
        names it.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunDirError(f"cannot use {self.root} as a run directory: {_first_line(e)}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirError(f"{self.root} is in use by {self._holder(fd)}; wait for it to finish, "
                                  f"or pass another --out") from None
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "command": command or " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode())
            return f"process {holder['pid']} on {holder['host']} ({holder['command']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def open(self, environment: dict[str, Any]) -> None:
        """Create the run, or check that a resumed one was measured on the same kind of machine.

        A corrupt environment.json is moved aside and written again, after checking the device against
        the rows already on disk instead; a corrupt cache file beside it is moved aside, and temp files
        of writes a kill cut short are removed.
        """
        env_path = self.root / ENVIRONMENT
        previous = None
        if env_path.exists():
            try:
                previous = read_json(env_path)
                if not isinstance(previous.get("device"), str):
                    raise CorruptFile(f"{env_path}: no 'device'")
            except CorruptFile as e:
                previous = None
                quarantine(env_path, self.records / CORRUPT, f"corrupt {e}; written again")
        if previous is None:
            previous = self._environment_from_rows()
        if previous is not None:
            for key in ("device", "device_name"):
                if previous.get(key) != environment.get(key):
                    raise RunDirError(
                        f"{self.root} holds a run on {previous.get('device_name')} "
                        f"({previous.get('device')}); this one is on {environment.get('device_name')} "
                        f"({environment.get('device')}): pass a new --out")
        if not env_path.exists():
            self._write(env_path, lambda: write_json(env_path, {"schema_version": SCHEMA_VERSION,
                                                                **environment}))
        for leftover in [*self.root.glob(".*.tmp"), *self.records.glob(".*.tmp")]:
            leftover.unlink(missing_ok=True)  # a write cut short by a kill; we hold the lock: nobody writes
        for cache in sorted(self.root.glob("*.json")):  # per-run caches (peak_matmul.json): a corrupt one
            if cache.name != ENVIRONMENT:                # is moved aside now, and measured again when needed
                read_json_cache(cache)

    def _environment_from_rows(self) -> dict[str, Any] | None:
        tables = [t for t in read_records(self.root) if "device_name" in t.column_names]
        return tables[0].select(["device", "device_name"]).to_pylist()[0] if tables else None

    def environment(self) -> dict[str, Any]:
        """environment.json; CorruptFile naming it when it cannot be read."""
        return read_json(self.root / ENVIRONMENT)

    def statuses(self) -> dict[str, str]:
        """case_id -> status of every valid record (corrupt ones are quarantined and left out)."""
        return {t.column("case_id")[0].as_py(): t.column("status")[0].as_py()
                for t in read_records(self.root, ["case_id", "status"])}

    def rows(self, case_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """case_id -> row of the given cases that have a valid record (others are left out)."""
        found = {}
        for case_id in case_ids:
            path = self.records / f"{case_id}.parquet"
            try:
                found[case_id] = read_record(path).to_pylist()[0] if path.is_file() else None
            except CorruptFile:
                found[case_id] = None
        return {k: v for k, v in found.items() if v is not None}

    def update_environment(self, **fields: Any) -> None:
        """Add fields to an opened run's environment.json (the doctor's findings, say)."""
        env_path = self.root / ENVIRONMENT
        payload = {**self.environment(), **fields}
        self._write(env_path, lambda: write_json(env_path, payload))

    def finished(self) -> set[str]:
        return set(self.statuses())

    def write(self, row: dict[str, Any]) -> Path:
        path = self.records / f"{row['case_id']}.parquet"
        # Nested dicts have no stable Parquet type (an empty one has none at all): store them as JSON.
        row = {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in row.items()}
        frame = pd.DataFrame([{"schema_version": SCHEMA_VERSION, **row}])
        # One-row files: pandas' metadata and column statistics would be most of each file.
        table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
        validate_record(table, path)  # a row the store could not read back is a bug: fail here
        self._write(path, lambda: atomic_write(path, lambda f: pq.write_table(table, f,
                                                                              write_statistics=False)))
        return path

    def _write(self, path: Path, write: Callable[[], Path]) -> None:
        try:
            write()
        except OSError as e:
            raise RunDirError(f"cannot write {path}: {_first_line(e)}; make {self.root} writable and run "
                              f"the same command again to resume") from None

    def clear(self) -> None:
        """Start the run over: remove its records (corrupt ones included), its report and its JSON files
        (environment.json, cached figures such as peak_matmul.json). Other files are left alone."""
        for child in (self.records, self.root / REPORT):
            shutil.rmtree(child, ignore_errors=True)
        for child in self.root.glob("*.json"):
            child.unlink(missing_ok=True)


# --- loading ------------------------------------------------------------------------------------------

def is_run_dir(path: Path) -> bool:
    return (path / RECORDS).is_dir() or (path / ENVIRONMENT).is_file()


def run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories at or below the given paths (a path may be one run or a folder of runs), each
    once however often it is named."""
    found: dict[Path, Path] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no results at {p}")
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is a file; pass a run directory (one holding records/)")
        runs = [p] if (p / RECORDS).is_dir() else sorted(d.parent for d in p.rglob(RECORDS) if d.is_dir())
        for run in runs:
            found.setdefault(run.resolve(), run)
    return list(found.values())


def load(*paths: str | Path) -> pd.DataFrame:
    """All rows of the given runs as one DataFrame, with a `run_dir` column naming each row's run."""
    frames = []
    for run in run_dirs(paths):
        for table in read_records(run):
            frame = table.to_pandas()
            frame["run_dir"] = str(run)
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["schema_version", "case_id", "suite", "variant", "status", "run_dir"])
    frames = [f.dropna(axis=1, how="all") for f in frames]  # all-None columns would widen dtypes to object
    return pd.concat(frames, ignore_index=True, sort=False)
