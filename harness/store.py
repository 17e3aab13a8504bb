"""The results store: `results/<run-id>/` holds environment.json and the run's rows under records/.

Rows land in records/ in two layouts, and a run may hold both:

- `records/<case_id>.parquet`: one case's row, written the moment the case finishes. One file per case
  makes every write atomic (temp file, fsync, rename): a run killed at any moment, SIGKILL included,
  loses at most the case in flight, and a re-run skips the cases already on disk.
- `records/suite-<suite>.parquet`: every row of one suite, sorted by case_id (`RunStore.compact`, run by
  the runner when a run finishes and by `attnbench compact`). Compaction writes each suite's file
  atomically, reads it back, and only then deletes the per-case files it folded in, so a kill during it
  loses nothing. A case's own file supersedes its row in the suite file (it was written later: a case
  added or measured again after the last compaction); the next compaction folds it in.

Compaction changes no value and no type: a suite whose rows give one column two types (other than a
column with no value in some rows) keeps its per-case files, with a warning. Which columns a row lacked
and which it held empty are not told apart once compacted: `RunStore.rows` reads both as absent.

Every file is created with the mode the umask gives (0644 under the usual 022), like any other tool's.
Every file of rows is checked on load against `REQUIRED` (a declared pyarrow schema): a file that is
not Parquet, cannot be read, or lacks the columns every row has is moved to `records/.corrupt/`, named in
one warning, and its cases run again on resume. A run directory is held by one process at a time
(`RunStore.lock`); readers take no lock. The schema is documented in results/README.md; `load()` reads
one run or many into one DataFrame, `RunStore.rows` a few cases' rows, `RunStore.statuses` what ran.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.errors import RunDirError

SCHEMA_VERSION = 1
RECORDS = "records"
SUITE_PREFIX = "suite-"  # records/suite-<suite>.parquet: a compacted suite (a case id is hex: never this)
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


class _Vanished(Exception):
    """A file listed a moment ago is gone: a compaction in another process folded it in."""


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


# --- files of rows ---------------------------------------------------------------------------------

def case_file(records: Path, case_id: str) -> Path:
    return records / f"{case_id}.parquet"


def suite_file(records: Path, suite: str) -> Path:
    return records / f"{SUITE_PREFIX}{quote(suite, safe='')}.parquet"


def suite_of(file: Path) -> str | None:
    """The suite a compacted file holds; None for a case's own file."""
    return unquote(file.stem[len(SUITE_PREFIX):]) if file.stem.startswith(SUITE_PREFIX) else None


def _check_case_id(case_id: Any) -> str:
    """A case id names a file: a plain name, never one the store uses for anything else."""
    if (not isinstance(case_id, str) or not case_id or case_id.startswith((".", SUITE_PREFIX))
            or Path(case_id).name != case_id):
        raise ValueError(f"case_id {case_id!r} cannot name a record file")
    return case_id


def _arrow_type_ok(actual: pa.DataType, field: pa.Field) -> bool:
    if pa.types.is_null(actual):  # every value missing
        return field.nullable
    if pa.types.is_string(field.type):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    return pa.types.is_integer(actual) if pa.types.is_integer(field.type) else actual == field.type


def validate_rows(table: pa.Table, file: Path) -> None:
    """Raise CorruptFile unless every row has every REQUIRED column (and any TYPED one), typed as
    declared, a known status and this schema version, and the file holds what its name says: a case's
    file one row, of that case; a suite's file rows of that suite, each case once."""
    suite = suite_of(file)
    if suite is None and table.num_rows != 1:
        raise CorruptFile(f"{file}: {table.num_rows} rows, a record holds one")
    if suite is not None and table.num_rows == 0:
        raise CorruptFile(f"{file}: no rows")
    for column in [*REQUIRED, *(f for f in TYPED if f.name in table.column_names)]:
        if column.name not in table.column_names:
            raise CorruptFile(f"{file}: no {column.name!r} column (not a record of this store)")
        actual = table.schema.field(column.name).type
        if not _arrow_type_ok(actual, column):
            raise CorruptFile(f"{file}: column {column.name!r} is {actual}, expected {column.type}")
        if not column.nullable and table.column(column.name).null_count:
            raise CorruptFile(f"{file}: column {column.name!r} is empty")
    versions = set(table.column("schema_version").to_pylist())
    if versions != {SCHEMA_VERSION}:
        other = sorted(versions - {SCHEMA_VERSION})[0]
        raise CorruptFile(f"{file}: schema_version {other}, this attnbench reads {SCHEMA_VERSION}")
    unknown = set(table.column("status").to_pylist()) - set(STATUSES)
    if unknown:
        raise CorruptFile(f"{file}: unknown status {sorted(unknown)[0]!r}")
    ids = table.column("case_id")
    if suite is None and ids[0].as_py() != file.stem:
        raise CorruptFile(f"{file}: holds case {ids[0].as_py()!r}, not the case it is named after")
    if suite is not None:
        others = set(table.column("suite").to_pylist()) - {suite}
        if others:
            raise CorruptFile(f"{file}: holds rows of suite {sorted(others)[0]!r}, not only of {suite!r}")
        if pc.count_distinct(ids).as_py() != len(ids):
            raise CorruptFile(f"{file}: a case appears twice")


def read_rows(file: Path, columns: list[str] | None = None) -> pa.Table:
    """The validated rows of a file of either layout (`columns`: only those, where the file has them);
    CorruptFile when it is not a file of rows of this store."""
    try:
        parquet = pq.ParquetFile(file)
        wanted = None
        if columns is not None:
            have = parquet.schema_arrow.names
            wanted = [c for c in dict.fromkeys([*REQUIRED.names, *TYPED.names, *columns]) if c in have]
        table = parquet.read(columns=wanted)
    except FileNotFoundError:
        raise _Vanished(file) from None
    except (OSError, pa.ArrowException, ValueError) as e:  # not Parquet, truncated, unreadable
        raise CorruptFile(f"{file}: unreadable ({_first_line(e)})") from None
    validate_rows(table, file)
    return table if columns is None else _select(table, columns)


def _select(table: pa.Table, columns: list[str]) -> pa.Table:
    """The named columns a table has, each once."""
    return table.select([c for c in dict.fromkeys(columns) if c in table.column_names])


def _read_or_quarantine(file: Path, columns: list[str] | None = None) -> pa.Table | None:
    try:
        return read_rows(file, columns)
    except CorruptFile as e:
        what = "its case runs" if suite_of(file) is None else "its cases run"
        quarantine(file, file.parent / CORRUPT, f"corrupt record {e}; {what} again on resume")
        return None


def _listed(records: Path) -> tuple[list[Path], list[Path]]:
    """(case files, suite files) of a records/ directory, each sorted."""
    files = sorted(records.glob("*.parquet")) if records.is_dir() else []
    return ([f for f in files if suite_of(f) is None], [f for f in files if suite_of(f) is not None])


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Tables of rows as one, sorted by case_id: a column some lack is empty in their rows."""
    if not tables:
        return pa.table({name: pa.array([], type=REQUIRED.field(name).type) for name in REQUIRED.names})
    return pa.concat_tables(tables, promote_options="permissive").sort_by("case_id")


def _value_kind(t: pa.DataType) -> pa.DataType | None:
    """What a column's values are, for compaction: None where the type holds no value (all missing, or
    lists of nothing); string and large_string alike (the same text either way)."""
    if pa.types.is_null(t):
        return None
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _value_kind(t.value_type)
        return None if inner is None else pa.list_(inner)
    return pa.string() if pa.types.is_large_string(t) else t


def type_conflict(tables: list[pa.Table]) -> str | None:
    """A column to which the tables give two kinds of value (int64 and double, say), named with them;
    None when they can share one table without a value changing type."""
    kinds: dict[str, set[pa.DataType]] = {}
    for table in tables:
        for f in table.schema:
            if (kind := _value_kind(f.type)) is not None:
                kinds.setdefault(f.name, set()).add(kind)
    for name, seen in kinds.items():
        if len(seen) > 1:
            return f"column {name!r} is {' in some rows, '.join(sorted(map(str, seen)))} in others"
    return None


def _fsync_dir(path: Path) -> None:
    """Make renames and deletions in a directory durable before the next step relies on them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Compaction:
    """What `RunStore.compact` did."""

    rows: dict[str, int] = field(default_factory=dict)  # suite -> rows in its compacted file
    folded: int = 0  # per-case files folded in and removed
    kept: dict[str, str] = field(default_factory=dict)  # suite -> why its per-case files stay


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

    def open(self, environment: dict[str, Any], machine_bound: bool = True) -> None:
        """Create the run, or check that a resumed one was measured on the same kind of machine.

        A suite whose rows do not depend on the machine (`machine_bound=False`: accuracies and errors,
        not speeds) may resume on another machine of the same device kind: each row names its machine,
        and environment.json lists every other machine under `resumed_on`.

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
                if key == "device_name" and not machine_bound and env_path.exists():
                    self._note_other_machine(env_path, previous, environment)
                elif previous.get(key) != environment.get(key):
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

    def _note_other_machine(self, env_path: Path, previous: dict[str, Any],
                            environment: dict[str, Any]) -> None:
        if previous.get("device_name") == environment.get("device_name"):
            return
        others = previous.setdefault("resumed_on", [])
        machine = {k: environment.get(k) for k in ("device_name", "cpu_threads", "hostname", "commit",
                                                   "torch")}
        if machine not in [{k: o.get(k) for k in machine} for o in others]:
            others.append({**machine, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            self._write(env_path, lambda: write_json(env_path, previous))

    def _environment_from_rows(self) -> dict[str, Any] | None:
        rows = self.table(["device", "device_name"])
        if "device_name" not in rows.column_names:
            return None
        named = rows.filter(pc.is_valid(rows.column("device_name")))
        return named.slice(0, 1).to_pylist()[0] if named.num_rows else None

    def environment(self) -> dict[str, Any]:
        """environment.json; CorruptFile naming it when it cannot be read."""
        return read_json(self.root / ENVIRONMENT)

    def update_environment(self, **fields: Any) -> None:
        """Add fields to an opened run's environment.json (the doctor's findings, say)."""
        env_path = self.root / ENVIRONMENT
        payload = {**self.environment(), **fields}
        self._write(env_path, lambda: write_json(env_path, payload))

    # --- reading ------------------------------------------------------------------------------------

    def _tables(self, columns: list[str] | None = None) -> tuple[list[pa.Table], list[pa.Table]]:
        """(the suite files' rows, the case files' rows), corrupt files quarantined.

        Case files are read first: a compaction in another process writes its suite files before it
        deletes the case files it folded in, so a row is in one or the other whenever it is read; a case
        file gone between listing and reading starts the reading over.
        """
        for _ in range(10):
            try:
                case_files, _ = _listed(self.records)
                cases = [t for f in case_files if (t := _read_or_quarantine(f, columns)) is not None]
                _, suite_files = _listed(self.records)
                suites = [t for f in suite_files if (t := _read_or_quarantine(f, columns)) is not None]
                return suites, cases
            except _Vanished:
                continue
        raise RunDirError(f"{self.records} kept changing while it was read; read it again")

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """Every recorded row of the run as one table sorted by case_id, from either layout: a case's
        own file supersedes its row in the suite file. `columns`: only those (where rows have them)."""
        suites, cases = self._tables(None if columns is None else list(dict.fromkeys(["case_id", *columns])))
        own = pa.array([t.column("case_id")[0].as_py() for t in cases], pa.string())
        older = [t.filter(pc.invert(pc.is_in(t.column("case_id"), value_set=own))) for t in suites]
        table = _concat([t for t in older if t.num_rows] + cases)
        return table if columns is None else _select(table, columns)

    def rows(self, case_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The recorded row of each id that has one, in either layout, as {column: value}; an id with no
        row is left out. A row holds the columns it has a value in (a column empty in it is absent)."""
        wanted = {_check_case_id(c) for c in case_ids}
        found: dict[str, dict[str, Any]] = {}
        for _ in range(10):
            try:
                found = {}
                for case_id in sorted(wanted):
                    file = case_file(self.records, case_id)
                    if file.is_file() and (table := _read_or_quarantine(file)) is not None:
                        found[case_id] = _present(table.to_pylist()[0])
                for file in _listed(self.records)[1]:
                    if (table := _read_or_quarantine(file)) is None:
                        continue
                    rest = pa.array(sorted(wanted - set(found)), pa.string())
                    for row in table.filter(pc.is_in(table.column("case_id"), value_set=rest)).to_pylist():
                        found[row["case_id"]] = _present(row)
                return found
            except _Vanished:
                continue
        raise RunDirError(f"{self.records} kept changing while it was read; read it again")

    def statuses(self) -> dict[str, str]:
        """case_id -> status of every valid row (corrupt files are quarantined and left out)."""
        table = self.table(["case_id", "status"])
        return dict(zip(table.column("case_id").to_pylist(), table.column("status").to_pylist(), strict=True))

    def finished(self) -> set[str]:
        return set(self.statuses())

    # --- writing ------------------------------------------------------------------------------------

    def write(self, row: dict[str, Any]) -> Path:
        """One case's row, as its own file (atomically, the moment the case ends)."""
        # Nested dicts have no stable Parquet type (an empty one has none at all): store them as JSON.
        row = {k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in row.items()}
        frame = pd.DataFrame([{"schema_version": SCHEMA_VERSION, **row}])
        # One-row files: pandas' metadata and column statistics would be most of each file.
        return self.write_record(pa.Table.from_pandas(frame, preserve_index=False))

    def write_record(self, table: pa.Table) -> Path:
        """A one-row table of rows (as `write` makes, or a row read back) as its case's own file."""
        table = table.replace_schema_metadata(None)
        path = case_file(self.records, _check_case_id(table.column("case_id")[0].as_py()))
        validate_rows(table, path)  # a row the store could not read back is a bug: fail here
        return self._write_parquet(path, table, write_statistics=False)

    def compact(self) -> Compaction:
        """Fold the case files into one file per suite; call it with the run locked (`lock`).

        Each suite's file is rewritten with its rows and the case files of that suite (which supersede
        its rows of their cases): read back in memory first, then written atomically; the case files
        are deleted only after every suite file is durable. A suite whose rows would change a value's
        type keeps its case files (`type_conflict`, one warning)."""
        suites, cases = self._tables()
        done = Compaction()
        if not cases:
            done.rows = {t.column("suite")[0].as_py(): t.num_rows for t in suites}
            return done
        compacted = {t.column("suite")[0].as_py(): t for t in suites}
        by_suite: dict[str, list[pa.Table]] = {}
        for t in cases:
            by_suite.setdefault(t.column("suite")[0].as_py(), []).append(t)
        folded = []
        for suite, own in sorted(by_suite.items()):
            ids = pa.array([t.column("case_id")[0].as_py() for t in own], pa.string())
            parts = list(own)
            if suite in compacted:
                older = compacted[suite]
                parts.insert(0, older.filter(pc.invert(pc.is_in(older.column("case_id"), value_set=ids))))
            conflict = type_conflict(parts)
            if conflict is not None:
                done.kept[suite] = conflict
                log.warning("%s: the %s rows stay one file per case (%s; compacted they would change "
                            "type)", self.root, suite, conflict)
                continue
            done.rows[suite] = self._write_suite(suite, _concat(parts))
            folded += [case_file(self.records, c) for c in ids.to_pylist()]
        _fsync_dir(self.records)
        for file in folded:
            file.unlink()
        _fsync_dir(self.records)
        done.folded = len(folded)
        for suite, t in compacted.items():
            done.rows.setdefault(suite, t.num_rows)
        return done

    def _write_suite(self, suite: str, table: pa.Table) -> int:
        """A suite's rows as its compacted file, checked in memory before anything on disk changes."""
        table = table.replace_schema_metadata(None)
        path = suite_file(self.records, suite)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        written = pq.read_table(pa.BufferReader(buffer.getvalue()))
        validate_rows(written, path)
        if not written.equals(table):  # a bug, not a state of the disk
            raise RuntimeError(f"the compacted rows of {suite!r} do not read back as written; "
                               f"{self.root} is left as it was")
        self._write(path, lambda: atomic_write(path, buffer.getvalue()))
        return table.num_rows

    def _write_parquet(self, path: Path, table: pa.Table, **options: Any) -> Path:
        self._write(path, lambda: atomic_write(path, lambda f: pq.write_table(table, f, **options)))
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


def _present(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if v is not None}


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


def load(*paths: str | Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """All rows of the given runs as one DataFrame, with a `run_dir` column naming each row's run. A run
    reads the same in either layout (`RunStore.table`). `columns`: only those (where rows have them)."""
    frames = []
    for run in run_dirs(paths):
        table = RunStore(run).table(None if columns is None else list(columns))
        if table.num_rows:
            frame = table.to_pandas()
            frame["run_dir"] = str(run)
            frames.append(frame.dropna(axis=1, how="all"))  # all-None columns would widen dtypes to object
    if not frames:
        return pd.DataFrame(columns=["schema_version", "case_id", "suite", "variant", "status", "run_dir"])
    return pd.concat(frames, ignore_index=True, sort=False)
