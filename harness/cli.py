"""attnbench command line: list the registry, run a suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import compiling, env, errors, model_presets, plugins, registry, runner, store, validate
from harness import estimate as plan_estimate
from harness.cli_report import recommend, report
from harness.errors import ArgumentError
from harness.registry import dtype_name
from harness.shard import Shard, select
from harness.suite import Suite

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark and profile attention architectures.")
console = Console()
SHORT_DTYPE = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def fail(message: str) -> None:
    raise ArgumentError(message)


@app.command("list")
def list_variants() -> None:
    """Print the registry: what each variant is, where it comes from, where it runs, what is unavailable
    here; then the plugins that failed to load (variants and suites)."""
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
    for problem in [*registry.problems(), *plugins.suite_problems()]:
        wide.print(f"[red]broken plugin[/] {problem.line()}", highlight=False)


def one_line_validation(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")  # a validator's own ValueError says what is wrong
    return f"{where}: {msg}" if where else msg


@app.command("run")
def run(
    suite: Annotated[str, typer.Option(help="Suite to run: " + ", ".join(plugins.suite_names()))],
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda when present)")] = None,
    profile: Annotated[str, typer.Option(help="quick, standard or full")] = "quick",
    out: Annotated[str | None, typer.Option(
        help="Run directory (default: results/SUITE-DEVICE-PROFILE)")] = None,
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Only these variants")] = None,
    seq_len: Annotated[list[int] | None, typer.Option("--seq-len", "-n", help="Only these lengths")] = None,
    dtype: Annotated[list[str] | None, typer.Option("--dtype", help="Only these dtypes")] = None,
    mode: Annotated[list[str] | None, typer.Option(
        "--mode", help="Throughput: only these modes (fwd, fwd_bwd, decode)")] = None,
    level: Annotated[list[str] | None, typer.Option(
        "--level", help="Throughput: only these levels (kernel, layer)")] = None,
    kind: Annotated[list[str] | None, typer.Option(
        "--kind", help="Throughput: only these kinds of case (sweep, fidelity)")] = None,
    timeout: Annotated[float | None, typer.Option(help="Per-case timeout in seconds")] = None,
    retry: Annotated[str, typer.Option(
        help="Which recorded cases to measure again: failed (error and timeout rows: an exception, a hang, "
             "a worker that died), none, or all")] = "failed",
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start OUT over: first delete its records (every suite's), report and JSON files")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
    shard: Annotated[str | None, typer.Option(
        help="Run part I of N of the plan (e.g. 2/4): the same parts on every machine, balanced by the "
             "suite's case_cost; merge the parts with `attnbench merge`")] = None,
    executor: Annotated[str, typer.Option(
        help="local (a worker process here) or ray (Ray tasks on a cluster; pip install attnbench[cluster])")
    ] = "local",
    ray_address: Annotated[str | None, typer.Option(
        help="With --executor ray: the cluster's head, HOST:PORT, or auto (the cluster on this machine)")
    ] = None,
    find_max_n: Annotated[bool, typer.Option(
        "--find-max-n", help="Throughput: bisect each variant's largest N (B=1, 16 heads of 64, forward) "
                             "under the memory cap, instead of the sweep (with -n: probe only those N)"
    )] = False,
    memory_gb: Annotated[float | None, typer.Option(
        help="With --find-max-n: the memory cap in GiB (default: 90% of the memory available)")] = None,
    seeds: Annotated[int | None, typer.Option(
        help="Learned tasks: seeds per configuration (0: none, the exactness checks alone)")] = None,
    finding: Annotated[list[str] | None, typer.Option(
        "--finding", help="Learned tasks: only the experiments of these findings")] = None,
    criterion: Annotated[float | None, typer.Option(
        help="Learned tasks: the validation accuracy that ends training, in (0, 1]")] = None,
    kv_heads: Annotated[list[int] | None, typer.Option(
        "--kv-heads", help="Throughput: grouped-query attention, k and v with this many heads (each must "
                           "divide n_heads; repeat for several; 1 is multi-query)")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Throughput: the serving profile (prefill, decode, state per sequence) at a model "
                        "preset's per-layer attention shape: " + ", ".join(model_presets.PRESETS))] = None,
    compile_: Annotated[bool, typer.Option(
        "--compile", help="Throughput and the accuracy suite's exactness checks: add the compiled series, "
                          "each variant under torch.compile as its own series (docs/compile.md)")] = False,
    lengths: Annotated[list[str] | None, typer.Option(
        "--lengths", help="Throughput: ragged batches, lengths drawn from this distribution (fixed, uniform, "
                          "chat; NAME:key=value,... sets its parameters): every kernel-level fwd and fwd_bwd "
                          "case padded and packed (docs/ragged.md)")] = None,
    estimate: Annotated[bool, typer.Option(
        "--estimate", help="Run nothing: print the plan's (or the shard's) case count and estimated time, "
                           "in all and per family, compiling and autotuning included (a --device cuda plan "
                           "needs no GPU here)")] = False,
) -> None:
    """Run a suite; rows land in OUT as each case finishes. Re-running with the same OUT resumes."""
    if memory_gb is not None and not find_max_n:
        fail("--memory-gb applies to --find-max-n")
    learned = {k: v for k, v in dict(seeds=seeds, findings=finding or None, criterion=criterion).items()
               if v is not None}
    if kv_heads:
        if find_max_n:
            fail("--find-max-n takes no --kv-heads (it probes the forward kernel at n_heads)")
        learned["kv_heads"] = validate.unique(kv_heads)  # a plan option of the throughput suite
    if model is not None:
        try:
            learned["model"] = model_presets.preset(model).name  # a plan option of the throughput suite
        except ValueError as e:
            fail(str(e))
        if find_max_n:
            fail("--find-max-n takes no --model (it probes the forward kernel at 16 heads of 64)")
    if compile_:
        if find_max_n:
            fail("--find-max-n takes no --compile (it probes the eager forward kernel)")
        learned["compiled"] = True  # a plan option of the throughput and accuracy suites
    if lengths:
        if find_max_n:
            fail("--find-max-n takes no --lengths (it probes the square forward kernel)")
        learned["lengths"] = validate.unique(lengths)  # a plan option of the throughput suite
    shape = {k: v for k, v in dict(mode=mode, level=level, kind=kind).items() if v}
    if find_max_n:
        if estimate:
            fail("--find-max-n has no plan to estimate: it bisects as it goes")
        if learned:
            fail("--find-max-n takes no --seeds, --finding or --criterion (they are for learned tasks)")
        if shape:
            fail("--find-max-n takes no --mode, --level or --kind (it probes the forward kernel)")
        if shard is not None or executor != "local":
            fail("--find-max-n runs here, one probe at a time: it takes no --shard or --executor")
        _find_max_n(suite, device, profile, out, variant, seq_len, dtype, memory_gb, timeout)
        return
    part = None
    if shard is not None:
        try:
            part = Shard.parse(shard)
        except ValueError as e:
            fail(str(e))
    if executor not in ("local", "ray"):
        fail(f"unknown --executor {executor!r}; use local or ray")
    if ray_address is not None and executor != "ray":
        fail("--ray-address needs --executor ray")
    if estimate:
        _estimate(suite, device, profile, out, variant, seq_len, dtype, retry, fresh, part, learned, shape)
        return
    where = _executor(executor, ray_address)
    try:
        _run(where, suite, device, profile, out, variant, seq_len, dtype, timeout, retry, fresh, progress,
             part, learned, shape)
    finally:
        where.close()


def _executor(name: str, ray_address: str | None):
    if name == "local":
        return runner.LocalExecutor()
    from harness import cluster

    try:
        return cluster.RayExecutor(ray_address or "auto")
    except ValueError as e:
        fail(str(e))


def _run(executor, suite, device, profile, out, variant, seq_len, dtype, timeout, retry, fresh, progress,
         part, learned, shape):
    """`run` once its executor is ready."""
    chosen, cases, out = _plan_run(suite, device, profile, out, variant, seq_len, dtype, retry, fresh,
                                   executor, learned, shape)
    timeout = validate.positive(timeout, "--timeout", validate.MAX_TIMEOUT_S, " s") or chosen.timeout_s
    what = f"{len(cases)} cases"
    if part is not None:
        planned, cases = len(cases), select(cases, part, chosen.case_cost)
        what = f"shard {part}: {len(cases)} of {planned} cases"
        if not cases:
            console.print(f"{suite}: shard {part} holds none of the {planned} cases; nothing to run")
            return
    errors.log_to(out)
    console.print(f"[bold]{suite}[/] on {cases[0].device}, profile {profile}: {what} -> {escape(str(out))}")
    summary = runner.run(cases, chosen.module, out, timeout_s=timeout, progress=progress, retry=retry,
                         fresh=fresh, run_fields={"profile": profile}, executor=executor)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())) or "nothing new"
    again = f" ({summary.retried} measured again, --retry {retry})" if summary.retried else ""
    console.print(f"rows written: {counts}{again}; already done: {summary.skipped_as_done}; "
                  f"results in {escape(str(out))}")
    chosen.summarize(out, console)
    if summary.interrupted:
        console.print(f"interrupted: every finished row is kept in {escape(str(out))}; run the same command "
                      f"to resume")
        raise typer.Exit(130)


def checked_device(device: str | None, executor=None, present: bool = True) -> str:
    """--device, or the default one (cuda where there is a GPU: here, or on the Ray cluster of `executor`);
    a CUDA device asked for must be there, unless only its plan is wanted (`present` False)."""
    on_ray = executor is not None and executor.name == "ray"
    gpus = executor.gpus() if on_ray else float(torch.cuda.is_available())
    default = ("cuda" if gpus else "cpu") if on_ray else env.default_device()
    device = validate.choice(default if device is None else device, "--device", ("cpu", "cuda"))
    if device == "cuda" and not gpus and present:
        fail("--device cuda but the Ray cluster has no GPU; use --device cpu or add GPU nodes" if on_ray
             else "--device cuda but no CUDA device is visible; use --device cpu")
    return device


def checked_suite(name: str) -> Suite:
    """--suite: the registered suite (harness.suite)."""
    try:
        return plugins.suite(name)
    except ValueError as e:
        fail(str(e))


def checked_variants(names: list[str] | None) -> list[str]:
    """-v/--variant, each registered (a name given twice counts once)."""
    names = validate.unique(names or [])
    for name in names:
        try:
            registry.get(name)
        except ValueError as e:
            fail(str(e))
    return names


def checked_lengths(lengths: list[int] | None) -> list[int]:
    """-n/--seq-len, each a valid length (a length given twice counts once)."""
    return validate.unique(validate.seq_len(n) for n in lengths or [])


def only_shapes(cases: list, shape: dict[str, list[str]]) -> list:
    """The cases whose `mode`, `level` and `kind` (throughput's fields) are among those asked for in
    `shape` ({"mode": [...], ...}); a value no case of the plan has is bad input."""
    for field, wanted in shape.items():
        planned = {getattr(c, field) for c in cases if hasattr(c, field)}
        if not planned:
            fail(f"--{field} applies to the throughput suite")
        unknown = sorted(set(wanted) - planned)
        if unknown:
            fail(f"--{field}: no case of this plan has {', '.join(unknown)}; "
                 f"it has {', '.join(sorted(planned))}")
        cases = [c for c in cases if getattr(c, field) in wanted]
    return cases


def _plan_run(suite, device, profile, out, variant, seq_len, dtype, retry, fresh, executor, learned,
              shape=None, present=True):
    """Every argument of `run` checked, then the suite's cases: (suite, cases, run directory)."""
    chosen = checked_suite(suite)
    device = checked_device(device, executor, present)
    profile = validate.choice(profile, "--profile", ("quick", "standard", "full"))
    validate.choice(retry, "--retry", runner.RETRY)
    names = checked_variants(variant)
    lengths = checked_lengths(seq_len)
    try:
        dtypes = validate.unique(dtype_name(d) for d in dtype or [])
    except ValueError as e:
        fail(f"--dtype: {e}")
    out = validate.output_dir(out) or Path("results") / f"{suite}-{device}-{profile}"
    if fresh and out.is_dir() and any(out.iterdir()) and not store.is_run_dir(out):
        fail(f"--fresh: {out} is not a run directory (no records/ or environment.json); it is left alone")
    for name in sorted(set(learned) - set(chosen.options)):
        if name in ("kv_heads", "model", "lengths"):
            fail(f"--{name.replace('_', '-')} applies to the throughput suite, not to {suite}")
        if name == "compiled":
            fail(f"--compile applies to the throughput and accuracy suites, not to {suite}")
        option = {"seeds": "--seeds", "findings": "--finding", "criterion": "--criterion"}[name]
        fail(f"{option} applies to the learned-task suites (accuracy, long-range), not to {suite}")
    if learned.get("compiled") and present:  # probed once, compiling nothing (an estimate needs no compiler)
        reason = compiling.unavailable_reason(device)
        if reason:
            fail(reason)
    try:
        cases = chosen.plan(profile=profile, device=device, variants=names or None, seq_lens=lengths or None,
                            dtypes=dtypes or None, **learned)
    except ValidationError as e:
        fail(one_line_validation(e))
    except ValueError as e:
        fail(str(e))
    cases = only_shapes(cases, shape or {})
    if not cases:
        fail("the filters leave no case to run; loosen --variant/--seq-len/--dtype/--mode/--level/--kind")
    return chosen, runner.unique(cases), out


def _estimate(suite, device, profile, out, variant, seq_len, dtype, retry, fresh, part, learned, shape):
    """`run --estimate`: the arguments checked as a run checks them, the plan (or the shard's part of it)
    estimated by the suite's model (harness.estimate), nothing run or written."""
    chosen, cases, _ = _plan_run(suite, device, profile, out, variant, seq_len, dtype, retry, fresh, None,
                                 learned, shape, present=False)
    title = f"{suite} on {cases[0].device}, profile {profile}"
    if part is not None:
        planned, cases = len(cases), select(cases, part, chosen.case_cost)
        title += f", shard {part} of {planned} cases"
        if not cases:
            console.print(f"{title}: holds none of them; nothing to estimate", highlight=False)
            return
    for line in plan_estimate.lines(title, cases, plan_estimate.of_suite(chosen)):
        console.print(line, highlight=False, soft_wrap=True)


@app.command("doctor")
def doctor(
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda when present)")] = None,
    out: Annotated[str | None, typer.Option(help="Run directory to keep the result in")] = None,
    variant: Annotated[list[str] | None, typer.Option("--variant", "-v", help="Only these variants")] = None,
) -> None:
    """Optional packages, GPU, driver and CUDA, and every variant through the registry's contract checks
    (harness.contract) on the device. Exit code 1 when a supported variant fails one."""
    from harness import doctor as checkup

    device = checked_device(device)
    names = checked_variants(variant)
    out = validate.output_dir(out)
    if out is not None:
        errors.log_to(out)
    result = checkup.run(device, names or None)
    Console(width=max(console.width, 160)).print(checkup.table(result))
    if out is not None:
        checkup.save(result, out)
    if not result["ok"]:
        raise typer.Exit(1)


def _find_max_n(suite, device, profile, out, variant, seq_len, dtype, memory_gb, timeout) -> None:
    """`run --find-max-n`: the suite's frontier search (throughput's), its arguments checked first."""
    chosen = checked_suite(suite)
    if chosen.find_max_n is None:
        fail(f"--find-max-n: suite {suite!r} has no memory-frontier search")
    device = checked_device(device)
    profile = validate.choice(profile, "--profile", ("quick", "standard", "full"))
    memory_gb = validate.positive(memory_gb, "--memory-gb")
    timeout = validate.positive(timeout, "--timeout", validate.MAX_TIMEOUT_S, " s")
    names = checked_variants(variant)
    lengths = checked_lengths(seq_len)
    out = validate.output_dir(out) or Path("results") / f"frontier-{device}-{profile}"
    try:
        chosen.find_max_n(device, profile, out, variants=names or None,
                          dtypes=validate.unique(dtype or []) or None, memory_gb=memory_gb,
                          time_cap_s=timeout, console=console, lengths=lengths or None)
    except ValueError as e:
        fail(str(e))
    console.print(f"frontier rows in {escape(str(out))}")


@app.command("import-benchmark")
def import_benchmark(
    json_file: Annotated[str, typer.Argument(help="pytest-benchmark JSON of suites/bench_throughput.py")],
    out: Annotated[str, typer.Option(help="Run directory to write the rows into")],
    suite: Annotated[str, typer.Option(help="The suite whose benchmark wrote the file")] = "throughput",
) -> None:
    """Turn a pytest-benchmark JSON file into results-store rows."""
    chosen = checked_suite(suite)
    if chosen.import_benchmark_json is None:
        fail(f"suite {suite!r} has no pytest-benchmark route (no import_benchmark_json)")
    path = validate.input_path(json_file, "JSON_FILE", kind="file")
    out_dir = validate.output_dir(out)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        fail(f"{path} is not JSON: {str(e).splitlines()[0]}")
    except RecursionError:
        fail(f"{path} is not JSON: nested too deeply to read")
    if not isinstance(report, dict) or not isinstance(report.get("benchmarks"), list):
        fail(f"{path} is not a pytest-benchmark JSON file (no list of 'benchmarks')")
    errors.log_to(out_dir)
    try:
        written = chosen.import_benchmark_json(path, out_dir)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, ArithmeticError) as e:
        what = (f"missing {e}" if isinstance(e, KeyError) else one_line_validation(e)
                if isinstance(e, ValidationError) else str(e).splitlines()[0])
        fail(f"{path} is not a JSON of suites/bench_throughput.py ({type(e).__name__}: {what})")
    console.print(f"{written} rows -> {escape(str(out_dir))}")


@app.command("merge")
def merge(
    out: Annotated[str, typer.Argument(help="New run directory to write the merged run into")],
    runs: Annotated[list[str], typer.Argument(help="Run directories (shards, machines) or folders of runs")],
    allow_mixed: Annotated[bool, typer.Option(
        "--allow-mixed", help="Merge runs of different commits or torch versions too")] = False,
) -> None:
    """Combine runs into OUT: one row per case (an ok row first, then the latest), sources named in
    OUT/environment.json."""
    from harness import merge as merging

    paths = [validate.input_path(r, "RUN") for r in runs]
    out = validate.output_dir(out, "OUT")
    errors.log_to(out)
    try:
        merged = merging.merge(out, paths, allow_mixed=allow_mixed)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e).splitlines()[0])
    console.print(f"{merged.rows} rows from {len(merged.sources)} runs -> {escape(str(out))} "
                  f"({merged.duplicates} duplicate rows left out)", soft_wrap=True)
    if len(merged.devices) > 1:
        devices = ", ".join(merged.devices)
        console.print(f"note: rows from {len(merged.devices)} different devices ({devices}); the report "
                      f"draws each apart", highlight=False, soft_wrap=True)


@app.command("compact")
def compact(
    runs: Annotated[list[str], typer.Argument(help="Run directories, or folders of runs")],
) -> None:
    """Fold each run's per-case record files into one Parquet file per suite. A run that finishes is
    compacted when it ends; this compacts one that was interrupted, or written before compaction."""
    try:
        found = store.run_dirs([validate.input_path(r, "RUN") for r in runs])
    except FileNotFoundError as e:
        fail(str(e))
    if not found:
        fail(f"no run (a directory holding records/) at or below {', '.join(runs)}")
    for run in found:
        errors.log_to(run)
        run_store = store.RunStore(run)
        with run_store.lock("attnbench compact"):
            done = run_store.compact()
        suites = ", ".join(f"{suite} {n}" for suite, n in sorted(done.rows.items())) or "no rows"
        console.print(f"{escape(str(run))}: rows per suite: {suites}; {done.folded} case files folded in",
                      highlight=False, soft_wrap=True)
        for suite, why in sorted(done.kept.items()):
            console.print(f"  {suite}: kept one file per case ({why})", highlight=False, soft_wrap=True)


app.command("report")(report)
app.command("recommend")(recommend)


def main() -> None:
    """Run the app: exit 0 on success, 2 with one line on bad input, 130 on Ctrl-C (errors.run_app)."""
    errors.run_app(app)


if __name__ == "__main__":
    main()
