"""The report's Correctness section: every exactness check outside its tolerance and every doctor failure.

A variant that computes the wrong function makes every other figure about it meaningless, so report.html
and summary.md open with this section, in red when it lists anything, and `attnbench report
--fail-on-incorrect` exits 1 then. It lists:
- exactness rows (accuracy suite, task "exactness", suites.exactness) with `within_tolerance` false: the
  variant, dtype, check (`input_kind`), N, the error and its tolerance, and the check's one line;
- exactness rows whose check gave NaN or Inf (`nonfinite`) or raised (`error`): a kernel that cannot
  compute a supported input is not correct either;
- the variants `attnbench doctor` failed (environment.json `doctor`), with the failed check in one line.
Exactness rows recorded before the gate carry no tolerance: the section counts them as not judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.report import data, html

FAILED_STATUSES = ("nonfinite", "error")  # an exactness check that could not give a finite answer
GATE_COLUMNS = ("task", "input_kind", "seq_len", "causal", "params", "checked_err", "tolerance",
                "within_tolerance", "check_detail", "reason", "run_dir")
COLUMNS = ["verdict", "source", "variant", "dtype", "check", "N", "causal", "params", "error", "tolerance",
           "what failed", "run"]


@dataclass
class Correctness:
    failures: pd.DataFrame  # COLUMNS, one row per failed exactness row or doctor failure
    judged: int  # exactness rows with a verdict (within_tolerance, nonfinite or error)
    unjudged: int  # ok exactness rows recorded before the gate: no tolerance
    doctored: int  # variants the doctor checked, over every run

    @classmethod
    def of(cls, results: data.Results) -> Correctness:
        rows = data.with_columns(results.rows, GATE_COLUMNS)
        exact = rows[(rows.suite == "accuracy") & (rows.task == "exactness")]
        verdict = exact.within_tolerance.map(lambda v: None if pd.isna(v) else bool(v))
        failed_rows = exact[(verdict == False) | exact.status.isin(FAILED_STATUSES)]  # noqa: E712
        judged = int(verdict.notna().sum() + exact.status.isin(FAILED_STATUSES).sum())
        unjudged = int(((exact.status == "ok") & verdict.isna()).sum())
        doctor = doctor_failures(results.environments)
        doctored = sum(len((env.get("doctor") or {}).get("variants", []))
                       for env in results.environments.values())
        table = pd.concat([_row_failures(failed_rows), doctor], ignore_index=True)
        table = table.sort_values(["variant", "source", "dtype", "check"], kind="stable", ignore_index=True)
        return cls(table.reindex(columns=COLUMNS), judged, unjudged, doctored)

    @property
    def failed(self) -> bool:
        return not self.failures.empty

    def sentence(self) -> str:
        """The verdict in one sentence."""
        if self.failed:
            variants = sorted(set(self.failures.variant))
            return (f"{len(self.failures)} correctness failure{'s' * (len(self.failures) != 1)} in "
                    f"{len(variants)} variant{'s' * (len(variants) != 1)} ({', '.join(variants)}): there, "
                    "they do not compute the function they declare.")
        if not self.judged and not self.doctored:
            return "Nothing judged: no exactness row with a tolerance and no doctor result in these runs."
        return (f"Every judged check within its tolerance: {self.judged} exactness rows, "
                f"{self.doctored} variants through the doctor.")

    def notes(self) -> list[str]:
        notes = []
        if self.unjudged:
            notes.append(f"{self.unjudged} exactness rows carry no tolerance (recorded before the "
                         "correctness gate): run the accuracy suite again to judge them.")
        if not self.doctored:
            notes.append("No doctor result: run `attnbench doctor --out RUN` (nox -s bench does).")
        return notes

    def html(self) -> str:
        style = "incorrect" if self.failed else "correct"
        body = f'<p class="{style}"><strong>{html.esc(self.sentence())}</strong></p>'
        body += "".join(f"<p>{html.esc(n)}</p>" for n in self.notes())
        if self.failed:
            body += html.table(self.failures, row_class="verdict")
        return body + (
            "<p>Each exactness row is one check of <code>harness.contract</code>: the output in its dtype "
            "against a float64 reference on the same rounded inputs (softmax under its mask for an exact "
            "variant, its own reference for an approximation), within a tolerance set by the dtype's unit "
            "roundoff, N and the size of the logits. An approximation's distance from softmax is its method, "
            "not a fault: it is the approximation chart, never judged here.</p>")

    def markdown(self, md_table) -> list[str]:
        """The section for summary.md; `md_table(df)` renders a table."""
        notes = "".join(f" _{n}_" for n in self.notes())
        if not self.failed:
            return ["### Correctness", f"{self.sentence()}{notes}", ""]
        table = md_table(per_variant(self.failures))
        return ["### Correctness", f"**❌ {self.sentence()}**{notes}", "", *table, ""]


def _row_failures(rows: pd.DataFrame) -> pd.DataFrame:
    detail = rows.check_detail.where(rows.status == "ok", rows.reason)
    return pd.DataFrame({
        "verdict": "incorrect", "source": "exactness row", "variant": rows.variant, "dtype": rows.dtype,
        "check": rows.input_kind, "N": rows.seq_len, "causal": rows.causal, "params": rows.params,
        "error": rows.checked_err, "tolerance": rows.tolerance,
        "what failed": [f"{s}: {d}" if s != "ok" else d for s, d in zip(rows.status, detail, strict=True)],
        "run": rows.run_dir,
    })


def doctor_failures(environments: dict[str, dict]) -> pd.DataFrame:
    """The variants each run's doctor failed: one row each, the failed check's line."""
    found = []
    for run, env in environments.items():
        for check in (env.get("doctor") or {}).get("variants", []):
            if check.get("status") != "fail":
                continue
            failed = [c for c in check.get("checks", []) if c.get("status") == "fail"]
            found.append({"verdict": "incorrect", "source": "doctor", "variant": check["variant"],
                          "dtype": check.get("dtype"), "check": failed[0]["check"] if failed else None,
                          "error": check.get("error"), "tolerance": check.get("tolerance"),
                          "what failed": check.get("detail"), "run": run})
    return pd.DataFrame(found, columns=COLUMNS)


def per_variant(failures: pd.DataFrame) -> pd.DataFrame:
    """One line per variant: its failed checks per dtype (exactness rows) and the doctor's verdict."""
    lines = []
    for variant, group in failures.groupby("variant", sort=True):
        rows = group[group.source == "exactness row"]
        by_dtype = "; ".join(f"{dtype}: {', '.join(sorted(set(g.check)))}"
                             for dtype, g in rows.groupby("dtype", sort=True))
        doctor = group[group.source == "doctor"]["what failed"]
        lines.append({"variant": f"❌ {variant}", "exactness checks outside tolerance": by_dtype or "-",
                      "first failure": rows["what failed"].iloc[0] if len(rows) else "-",
                      "doctor": doctor.iloc[0] if len(doctor) else "-"})
    return pd.DataFrame(lines)
