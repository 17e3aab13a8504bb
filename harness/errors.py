"""Errors the command line reports as one line with exit code 2, the log an unexpected one goes to, and
`run_app`, which runs a command-line app under those rules."""

from __future__ import annotations

import logging
import os
import sys
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


def run_app(app) -> None:
    """Run a command-line app (a typer.Typer): exit 0 on success, 2 with one line on bad input, 130 on
    Ctrl-C. Anything else is a bug: one line on the terminal, the traceback in a log file (the run
    directory's when known)."""
    import typer  # here: the runner's workers import this module for one_line

    _warnings_as_lines()
    try:
        code = app(standalone_mode=False, prog_name="attnbench")
    except ArgumentError as e:
        print(f"attnbench: error: {printable(str(e))}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as e:
        if hasattr(e, "format_message"):  # a usage error of typer's click: one line, exit 2
            message = e.format_message().strip()
            if message:  # empty when typer already printed the help
                print(f"attnbench: error: {printable(message.splitlines()[-1])}", file=sys.stderr)
            sys.exit(getattr(e, "exit_code", 2))
        log = write_crash_log(e, sys.argv)
        where = f"the traceback is in {log}" if log else "no log could be written"
        print(f"attnbench: internal error: {printable(one_line(e))} ({where}; please report it)",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def printable(text: str) -> str:
    """One line whatever a path or value held: control characters (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


def _warnings_as_lines() -> None:
    """The store's warnings (a corrupt file moved aside) as `attnbench: warning: ...` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("attnbench: warning: %(message)s"))
    logger = logging.getLogger("attnbench")
    logger.handlers[:] = [handler]
    logger.propagate = False
