"""The `attnbench` entry point: exit 0 on success, 2 with one line on bad input, 130 on Ctrl-C. Anything
else is a bug: one line on the terminal, the traceback in a log file (the run directory's when known).

`attnbench recommend` runs from here without harness.cli, which imports torch and every suite's plugin to
build its commands: the answer then comes in about a second, not several. Every other command goes
through harness.cli.
"""

from __future__ import annotations

import logging
import sys

import typer

from harness import errors
from harness.errors import ArgumentError

LIGHT_COMMANDS = ("recommend",)  # commands that import neither torch nor the plugins


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in LIGHT_COMMANDS:
        run(_light_app())
    from harness import cli

    cli.main()


def _light_app() -> typer.Typer:
    from harness.cli_report import recommend

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)  # keeps `recommend` a subcommand, as in harness.cli's app
    app.command("recommend")(recommend)
    return app


def run(app: typer.Typer) -> None:
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
        log = errors.write_crash_log(e, sys.argv)
        where = f"the traceback is in {log}" if log else "no log could be written"
        print(f"attnbench: internal error: {printable(errors.one_line(e))} ({where}; please report it)",
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


if __name__ == "__main__":
    main()
