"""The `attnbench` entry point (exit codes: harness.errors.run_app).

`attnbench recommend` runs from here without harness.cli, which imports torch and every suite's plugin to
build its commands: the answer then comes in about a second, not several. Every other command goes
through harness.cli.
"""

from __future__ import annotations

import sys

import typer

from harness import errors

LIGHT_COMMANDS = ("recommend",)  # commands that import neither torch nor the plugins


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in LIGHT_COMMANDS:
        errors.run_app(_light_app())
    from harness import cli

    cli.main()


def _light_app() -> typer.Typer:
    from harness.cli_report import recommend

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)  # keeps `recommend` a subcommand, as in harness.cli's app
    app.command("recommend")(recommend)
    return app


if __name__ == "__main__":
    main()
