"""The throughput suite's summary after a run: each variant's largest N that ran, per level and mode."""

from __future__ import annotations

from pathlib import Path

from harness import store
from suites.grids import LEVELS, MODES


def largest_feasible(df) -> dict[tuple[str, str, str], tuple[int | None, int | None]]:
    """(variant, level, mode) -> (largest N that ran ok, smallest N that ran out of memory)."""
    found = {}
    for (variant, level, mode), group in df.groupby(["variant", "level", "mode"], sort=True):
        ok = group.loc[group.status == "ok", "seq_len"]
        oom = group.loc[group.status == "oom", "seq_len"]
        found[variant, level, mode] = (int(ok.max()) if len(ok) else None,
                                       int(oom.min()) if len(oom) else None)
    return found


def summarize(out_dir: str | Path, console) -> None:
    """Print each variant's largest N that ran on this device, per level and mode (eager: the compiled
    series runs at a few of the grid's lengths only)."""
    from rich.table import Table

    df = store.load(out_dir)
    df = df[df.suite == "throughput"] if "suite" in df else df.iloc[0:0]
    df = df[df["kind"].fillna("sweep") == "sweep"] if "kind" in df else df
    df = df[df["compiled"].fillna(False) != True] if "compiled" in df else df  # noqa: E712  (eager calls)
    if df.empty:
        return
    found = largest_feasible(df)
    table = Table(title=f"largest N that ran on {df.device_name.iloc[0]} (oom: smallest N out of memory)")
    table.add_column("variant", no_wrap=True)
    table.add_column("level")
    for mode in MODES:
        table.add_column(mode, justify="right")
    for variant in sorted(df.variant.unique()):
        for level in LEVELS:
            cells = []
            for mode in MODES:
                ok, oom = found.get((variant, level, mode), (None, None))
                cells.append(("-" if ok is None else str(ok)) + ("" if oom is None else f" (oom {oom})"))
            table.add_row(variant, level, *cells)
    console.print(table)
