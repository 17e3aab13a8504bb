"""`attnbench report` and `attnbench recommend`: registered on the app in harness/cli.py.

Bad input (a missing directory, no rows, results that cannot answer the question) is an
ArgumentError: the CLI prints it as one line and exits with code 2. The report package (matplotlib,
seaborn) is imported only when one of these commands runs, to keep `attnbench` itself quick to start.
"""

from __future__ import annotations

import math
import sys
from typing import Annotated

import typer

from harness import dtypes, errors, model_presets, validate
from harness.errors import ArgumentError


def _usage(error: Exception) -> ArgumentError:
    message = error.args[0] if isinstance(error, FileNotFoundError) and error.args else str(error)
    return ArgumentError(str(message).splitlines()[0])


def report(
    results: Annotated[list[str], typer.Argument(help="Run directories, or folders of runs")],
    compare: Annotated[str | None, typer.Option(help="A baseline run to set beside this one")] = None,
    out: Annotated[str | None, typer.Option(help="Report directory (default: RESULTS_DIR/report)")] = None,
    threshold: Annotated[float, typer.Option(help="Regression threshold (0.05 = 5%)")] = 0.05,
    pareto_n: Annotated[int | None, typer.Option(help="Length of the quality-vs-throughput chart")] = None,
    fail_on_regression: Annotated[bool, typer.Option(
        "--fail-on-regression", help="Exit with code 1 when --compare finds a regression (for CI)")] = False,
    fail_on_incorrect: Annotated[bool, typer.Option(
        "--fail-on-incorrect", help="Exit with code 1 when the Correctness section lists a failure: an "
        "exactness check outside its tolerance or a doctor failure (for CI)")] = False,
) -> None:
    """Render charts, report.html and summary.md; print the path of report.html. The exit codes of the
    --fail-on options come after the report is written."""
    from harness.report import render

    paths = list({p.resolve(): p for p in (validate.input_path(r, "RESULTS") for r in results)}.values())
    baseline = validate.input_path(compare, "--compare") if compare is not None else None
    if fail_on_regression and compare is None:
        raise ArgumentError("--fail-on-regression needs --compare BASELINE_RUN")
    if not (math.isfinite(threshold) and 0 < threshold < 1):
        raise ArgumentError(f"--threshold must be between 0 and 1 (0.05 = 5%), got {threshold:g}")
    validate.seq_len(pareto_n, "--pareto-n")
    out_dir = validate.output_dir(out if out is not None else str(paths[0] / render.REPORT_DIR), "--out")
    errors.log_to(out_dir)
    try:
        built = render.build(paths, out_dir, baseline=baseline, threshold=threshold, pareto_n=pareto_n)
    except (FileNotFoundError, ValueError) as e:
        raise _usage(e) from None
    if built.comparison is not None:
        n = len(built.comparison.regressions)
        print(f"{n} regression{'s' * (n != 1)} beyond {threshold:.0%} against {compare}", file=sys.stderr)
    if built.correctness.failed:
        print(built.correctness.sentence(), file=sys.stderr)
    print(built.html)
    regressed = fail_on_regression and len(built.comparison.regressions)
    if regressed or (fail_on_incorrect and built.correctness.failed):
        raise typer.Exit(1)


def recommend(
    results: Annotated[str, typer.Argument(help="A run directory (every suite that ran there is used)")],
    seq_len: Annotated[int, typer.Option(
        "--context", "--seq-len", "-n", help="Context length to serve (prompt + generated), or to train at")],
    users: Annotated[int | None, typer.Option(help="Concurrent users, each holding a sequence")] = None,
    batch: Annotated[int | None, typer.Option(help="Sequences decoded together (instead of --users)")] = None,
    memory_gb: Annotated[float | None, typer.Option(
        help="GiB for the users' decode states and one prefill (train: peak memory of one call)")] = None,
    ttft_ms: Annotated[float | None, typer.Option(
        help="Time-to-first-token limit: one prompt's prefill")] = None,
    tokens_per_s_per_user: Annotated[float | None, typer.Option(
        help="Decode rate each user needs (tokens/s)")] = None,
    kv_heads: Annotated[int | None, typer.Option(
        help="KV heads of the product's attention (scales the KV cache from the rows' heads; default: "
             "--model's)")] = None,
    layers: Annotated[int | None, typer.Option(
        help="Attention layers: per-layer time and state x this (default: --model's, else 1)")] = None,
    model: Annotated[str | None, typer.Option(
        help="A model preset (" + ", ".join(model_presets.PRESETS) + "): the rows measured at its shape "
             "(run --suite throughput --model), its layers and KV heads")] = None,
    latency_ms: Annotated[float | None, typer.Option(
        help="Latency limit of one forward+backward call (--mode train)")] = None,
    min_accuracy: Annotated[float | None, typer.Option(
        help="Minimum accuracy over the learned tasks every ranked variant ran, 0..1")] = None,
    mode: Annotated[str, typer.Option(help="infer (serve: forward, decode) or train (forward+backward)")] = (
        "infer"),
    causal: Annotated[bool, typer.Option("--causal", help="Causal attention (default: non-causal)")] = False,
    dtype: Annotated[str | None, typer.Option(help="Only this dtype (default: the one decode ran in, "
                                                   "else bf16, fp16, fp32)")] = None,
) -> None:
    """Rank the variants that meet a product's constraints at a context (each figure measured there or
    extrapolated along N, and said which); say what eliminated each other one."""
    from harness.report import data
    from harness.report import recommend as ranking

    path = validate.input_path(results, "RESULTS")
    validate.seq_len(seq_len, "--context")
    validate.choice(mode, "--mode", ranking.MODES)
    counts = ((users, "--users"), (batch, "--batch"), (kv_heads, "--kv-heads"), (layers, "--layers"))
    for value, option in counts:
        validate.positive(value, option, upper=MAX_COUNT)
    validate.positive(memory_gb, "--memory-gb", unit=" GiB")
    validate.positive(ttft_ms, "--ttft-ms", unit=" ms")
    validate.positive(tokens_per_s_per_user, "--tokens-per-s-per-user")
    validate.positive(latency_ms, "--latency-ms", unit=" ms")
    validate.fraction(min_accuracy, "--min-accuracy")
    try:
        dtype = dtypes.canonical(dtype) if dtype is not None else None
    except ValueError as e:
        raise ArgumentError(f"--dtype: {e}") from None
    try:  # a Request refuses options that do not go together (--users with --batch, ...)
        request = ranking.Request(seq_len=seq_len, mode=mode, causal=causal, memory_gb=memory_gb,
                                  latency_ms=latency_ms, min_accuracy=min_accuracy, dtype=dtype,
                                  results=str(path), users=users, batch=batch, ttft_ms=ttft_ms,
                                  tokens_per_s_per_user=tokens_per_s_per_user, kv_heads=kv_heads,
                                  layers=layers, model=model)
    except ValueError as e:
        raise ArgumentError(str(e)) from None
    try:
        rows = data.Results.load(path, columns=ranking.COLUMNS).rows
        if rows.empty:
            raise ValueError(f"no result rows under {path}: run `attnbench run` first")
        print(ranking.render(ranking.recommend(rows, request)))
    except (FileNotFoundError, ValueError) as e:  # MissingData is a ValueError
        raise _usage(e) from None


MAX_COUNT = 10**9  # users, batch, KV heads, layers: beyond this a count is a typo
