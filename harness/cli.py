"""attnbench command line: list the registry, run a suite."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from harness import env, plugins, registry, runner
from harness.cli_report import recommend, report
from harness.errors import ArgumentError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and profile attention architectures.")
console = Console()
SHORT_DTYPE = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def fail(message: str) -> None:
    raise ArgumentError(message)


@app.command("list")
def list_variants() -> None:
    """Print the registry: what each variant is, where it comes from, where it runs, what is unavailable
    here; then the plugins that failed to load."""
    table = Table(title="attnbench variants", show_lines=False)
    for col in ("name", "family", "exact", "package", "devices", "dtypes", "unavailable here"):
        table.add_column(col)
    for v in registry.all_variants():
        devices = v.support.devices
        dtypes = "; ".join(f"{d}: " + " ".join(SHORT_DTYPE[t] for t in v.support.dtypes[d]) for d in devices)
        missing = [f"{d}: {r}" for d in devices if (r := v.support.unavailable_reason(d))]
        table.add_row(v.name + (" (baseline)" if v.baseline else ""), v.family, "yes" if v.exact else "no",
                      str(v.source), ",".join(devices), dtypes, "; ".join(missing) or "-")
    wide = Console(width=max(console.width, 180))
    wide.print(table)
    for problem in registry.problems():
        wide.print(f"[red]broken plugin[/] {problem.line()}", highlight=False)


def one_line_validation(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


@app.command("run")
def run(
    suite: Annotated[str, typer.Option(help="Suite to run: " + ", ".join(plugins.suite_names()))],
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda when present)")] = None,
    profile: Annotated[str, typer.Option(help="quick, standard or full")] = "quick",
    out: Annotated[Path | None, typer.Option(help="Run directory")] = None,
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Only these variants")] = None,
    seq_len: Annotated[list[int] | None, typer.Option("--seq-len", "-n", help="Only these lengths")] = None,
    dtype: Annotated[list[str] | None, typer.Option("--dtype", help="Only these dtypes")] = None,
    timeout: Annotated[float | None, typer.Option(help="Per-case timeout in seconds")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Run a suite; rows land in OUT as each case finishes. Re-running with the same OUT resumes."""
    device = device or env.default_device()
    if device not in ("cpu", "cuda"):
        fail(f"unknown device {device!r}; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but no CUDA device is visible; use --device cpu")
    if profile not in ("quick", "standard", "full"):
        fail(f"unknown profile {profile!r}; use quick, standard or full")
    try:
        module = plugins.suite(suite)
    except ValueError as e:
        fail(str(e))
    for name in variant or []:
        try:
            registry.get(name)
        except ValueError as e:
            fail(str(e))
    if any(n <= 0 for n in seq_len or []):
        fail(f"--seq-len must be positive, got {min(seq_len)}")
    try:
        cases = module.plan(profile=profile, device=device, variants=variant or None,
                            seq_lens=seq_len or None, dtypes=dtype or None)
    except ValidationError as e:
        fail(one_line_validation(e))
    except ValueError as e:
        fail(str(e))
    if not cases:
        fail("the filters leave no case to run; loosen --variant/--seq-len/--dtype")
    out = out or Path("results") / f"{suite}-{device}-{profile}"
    console.print(f"[bold]{suite}[/] on {device}, profile {profile}: {len(cases)} cases -> {out}")
    try:
        summary = runner.run(cases, module.__name__, out, timeout_s=timeout or module.TIMEOUT_S,
                             progress=progress)
    except ValueError as e:
        fail(str(e))
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())) or "nothing new"
    console.print(f"rows written: {counts}; already done: {summary.skipped_as_done}; results in {out}")
    if hasattr(module, "summarize"):
        module.summarize(out, console)
    if summary.interrupted:
        console.print(f"interrupted: every finished row is kept in {out}; run the same command to resume")
        raise typer.Exit(130)


@app.command("doctor")
def doctor(
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda when present)")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory to keep the result in")] = None,
) -> None:
    """Optional packages, GPU, driver and CUDA, and a parity smoke of every variant's fast path against
    its reference. Exit code 1 when a supported variant fails."""
    from harness import doctor as checkup

    device = device or env.default_device()
    if device not in ("cpu", "cuda"):
        fail(f"unknown device {device!r}; use cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but no CUDA device is visible; use --device cpu")
    result = checkup.run(device)
    Console(width=max(console.width, 160)).print(checkup.table(result))
    if out is not None:
        checkup.save(result, out)
    if not result["ok"]:
        raise typer.Exit(1)


@app.command("import-benchmark")
def import_benchmark(
    json_file: Annotated[Path, typer.Argument(help="pytest-benchmark JSON of suites/bench_throughput.py")],
    out: Annotated[Path, typer.Option(help="Run directory to write the rows into")],
    suite: Annotated[str, typer.Option(help="The suite whose benchmark wrote the file")] = "throughput",
) -> None:
    """Turn a pytest-benchmark JSON file into results-store rows."""
    try:
        module = plugins.suite(suite)
    except ValueError as e:
        fail(str(e))
    if not hasattr(module, "import_benchmark_json"):
        fail(f"suite {suite!r} has no pytest-benchmark route (no import_benchmark_json)")
    if not json_file.is_file():
        fail(f"no such file: {json_file}")
    console.print(f"{module.import_benchmark_json(json_file, out)} rows -> {out}")


app.command("report")(report)
app.command("recommend")(recommend)


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except ArgumentError as e:
        print(f"attnbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:
        if not hasattr(e, "format_message"):  # a usage error of typer's click: one line, exit 2
            raise
        message = e.format_message().strip()
        if message:  # empty when typer already printed the help
            print(f"attnbench: error: {message.splitlines()[-1]}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
