"""Errors the command line reports as one line with exit code 2, and the log an unexpected one goes to."""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

CRASH_LOG = "attnbench-error.log"
_log_dir: list[Path] = []  # the run (or report) directory of the command in progress, once it is known


def one_line(exc: BaseException) -> str:
    """'TypeError: the first line of its message' (at most 500 characters)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


class ArgumentError(Exception):
    """Bad input: a wrong argument, a missing directory, results that cannot answer the question."""


class RunDirError(ArgumentError):
    """A run directory that cannot be used as asked: not writable, held by another process, measured on
    another machine. The message says what to do."""


def log_to(directory: str | Path) -> None:
    """Where the traceback of an unexpected error goes: this directory, from now on in this process."""
    _log_dir[:] = [Path(directory)]


def write_crash_log(exc: BaseException, argv: list[str]) -> Path | None:
    """Append the full traceback of `exc` to the log of the current run directory, else to a temporary
    file; return the log's path (None when nothing could be written anywhere)."""
    text = (f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} pid {os.getpid()}: "
            f"{' '.join(argv)}\n" + "".join(traceback.format_exception(exc)))
    candidates = [d / CRASH_LOG for d in _log_dir]
    candidates.append(Path(tempfile.gettempdir()) / f"attnbench-error-{os.getpid()}.log")
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None
