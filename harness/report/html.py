"""The HTML report: one file with its CSS inline and its charts as image files beside it.

No script, no font, nothing fetched: the directory opens offline in any browser.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness import store

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2430; }
header, section { max-width: 1700px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; border-bottom: 1px solid #d8dde6; }
nav a { margin-right: 14px; }
h2 { margin-top: 34px; border-bottom: 2px solid #e4e8ef; padding-bottom: 4px; }
figure { margin: 18px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e8ef; }
figcaption { color: #4a5468; font-size: 13.5px; max-width: 1100px; }
table.data { border-collapse: collapse; font-size: 13.5px; margin: 10px 0 20px; }
table.data th, table.data td { border-bottom: 1px solid #e4e8ef; padding: 4px 10px; text-align: left; }
table.data th { background: #f3f5f9; }
tr.regression td { background: #fde8e8; }
tr.improvement td { background: #e6f6ea; }
.missing { color: #8a5a00; background: #fff7e0; padding: 8px 12px; border-radius: 4px; }
.smoke { color: #7a1f00; background: #ffe9dc; border: 1px solid #f0b89a; padding: 8px 12px; }
ul.findings li { margin: 3px 0; }
code { background: #f3f5f9; padding: 1px 4px; border-radius: 3px; }
.verdict-ok { color: #1a7f37; } .verdict-bad { color: #b42318; } .verdict-warn { color: #8a5a00; }
.incorrect { color: #b42318; } .correct { color: #1a7f37; }
tr.incorrect td { background: #fde8e8; color: #b42318; }
.figures { color: #4a5468; font-size: 13.5px; }
table.grid td { text-align: right; white-space: nowrap; }
table.grid tbody th { text-align: left; background: #f3f5f9; font-weight: normal; }
details { margin: 8px 0 16px; }
summary { cursor: pointer; color: #2b4a8b; }
"""


@dataclass
class Chart:
    name: str
    title: str
    caption: str
    svg: str  # path relative to the report


def esc(value) -> str:
    return html.escape(str(value))


def cell(value) -> str:
    """A table cell: 3 significant figures for floats, whole numbers without a point, empty for missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.0f}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:.3g}"
    return str(value)


MAX_VISIBLE_ROWS = 40  # a longer table is folded away (a <details> the reader opens)


def table(df: pd.DataFrame, row_class: str | None = None, fold: str | None = None) -> str:
    """An HTML table of a DataFrame; `row_class` names a column whose value also becomes each row's class.
    A table of more than MAX_VISIBLE_ROWS rows, or any with `fold` (its summary line), is folded away."""
    if df.empty:
        return '<p class="missing">nothing to show</p>'
    if fold is not None or len(df) > MAX_VISIBLE_ROWS:
        return details(fold or f"{len(df)} rows: show", _table(df, row_class))
    return _table(df, row_class)


def details(summary: str, body: str) -> str:
    """A folded block: `summary` shows, `body` (html) opens on a click."""
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def _table(df: pd.DataFrame, row_class: str | None) -> str:
    shown = list(df.columns)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown)
    body = []
    for _, row in df.iterrows():
        cls = f' class="{esc(row[row_class])}"' if row_class else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(cell(row[c]))}</td>" for c in shown) + "</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def grid(corner: str, rows: list, columns: list, cells: dict) -> str:
    """A matrix: `cells[(row, column)]` = (text, background colour or "", title shown on hover); other
    cells are empty, the diagonal of a square matrix a dash."""
    head = f"<th>{esc(corner)}</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        tds = []
        for c in columns:
            text, color, title = cells.get((r, c), ("\u2014" if r == c else "", "", ""))
            style = f' style="background:{esc(color)}"' if color else ""
            hover = f' title="{esc(title)}"' if title else ""
            tds.append(f"<td{style}{hover}>{esc(text)}</td>")
        body.append(f"<tr><th>{esc(r)}</th>{''.join(tds)}</tr>")
    return (f'<table class="data grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table>")


def figure(chart: Chart) -> str:
    return (f'<figure id="chart-{esc(chart.name)}"><img src="{esc(chart.svg)}" alt="{esc(chart.title)}">'
            f'<figcaption>{esc(chart.caption)}</figcaption></figure>')


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def bullets(items) -> str:
    return '<ul class="findings">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]], banner: str = "") -> str:
    """A whole document from (anchor, title, body html) sections; `banner` (html) goes under the title."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>{banner}<nav>{nav}</nav></header>"
        f"{body}</body></html>\n"
    )


def write(path: Path, text: str) -> Path:
    return store.atomic_write(path, text.encode("utf-8"))
