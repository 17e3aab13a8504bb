"""The report's serving section: `recommend`'s answer, without constraints, at the longest context the run
decoded at, so that every figure in it is measured (or says that it is not). The reader asks their own
product's question with `attnbench recommend RUN --context N --users U --memory-gb M --kv-heads K`.
"""

from __future__ import annotations

import pandas as pd

from harness.report import data, html, serving
from harness.report import recommend as ranking


def context_of(rows: pd.DataFrame) -> int | None:
    """The longest context that ran causal decode rows at the level and dtype the answer reads (None: the
    run decoded nothing)."""
    chosen, _, _ = serving.rows_for(data.throughput(rows), causal=True, dtype=None)
    decoded = chosen[(chosen["mode"] == "decode") & (chosen.status == "ok")] if not chosen.empty else chosen
    return int(decoded.seq_len.max()) if not decoded.empty else None


def html_section(rows: pd.DataFrame) -> str:
    context = context_of(rows)
    if context is None:
        return html.missing("no decode rows: run `attnbench run --suite throughput --out RESULTS_DIR` (its "
                            "grids decode at every level) for time to first token, decode rate and state "
                            "per sequence")
    try:
        answer = ranking.recommend(rows, ranking.Request(seq_len=context, causal=True))
    except ValueError as e:  # MissingData: the run cannot answer; the message says what to run
        return html.missing(str(e))
    body = (f"<p>Per variant at a context of {context} tokens (the longest that level decoded at): time to "
            f"first token (one prompt's prefill), decode tokens/s per user and the decode state one "
            f"sequence holds; {html.esc(answer.setting)}. (m) measured at that context, (i) interpolated, "
            f"(x) extrapolated along N, with the scaling exponent's 95% interval carried there. A product's "
            f"own question: <code>attnbench recommend RUN --context N --users U --memory-gb M --kv-heads K "
            f"--causal</code> (docs/recommend.md).</p>")
    body += html.table(ranking.answer_table(answer))
    per_task = ranking.accuracy_table(answer.accuracy)
    if not per_task.empty:
        body += "<h3>Accuracy per task, on equal terms</h3>" + html.table(per_task)
    lines = ranking.sources(answer)
    if lines:
        body += "<h3>Where the figures not measured at this context come from</h3>" + html.bullets(lines)
    notes = ranking.accuracy_notes(answer.accuracy) + answer.notes
    return body + (html.bullets(notes) if notes else "")
