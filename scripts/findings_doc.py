"""Write docs/findings.md's findings table and quoted figures from a run's findings.json (or check them).

    python scripts/findings_doc.py results/reference/cpu-standard-intel-xeon-2core          # rewrite the doc
    python scripts/findings_doc.py results/reference/cpu-standard-intel-xeon-2core --check  # 1 if it differs
    python scripts/findings_doc.py RUN --table                                              # print the table

The run's findings.json is what `attnbench run` (or `python -m suites.findings RUN`) wrote. Bad input (no
findings.json, a document without its markers, a quoted figure that names no single row) exits 2 with
one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import ArgumentError
from harness.report import findings_doc

DOC = Path(__file__).resolve().parents[1] / "docs" / "findings.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory holding findings.json")
    parser.add_argument("--doc", type=Path, default=DOC, help="the document (default docs/findings.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the document is not its rendering")
    parser.add_argument("--table", action="store_true", help="print the findings table, write nothing")
    args = parser.parse_args(argv)
    try:
        found = load(Path(args.run))
        if args.table:
            print(findings_doc.table(found), end="")
            return 0
        if not args.doc.is_file():
            raise ArgumentError(f"no document at {args.doc}")
        text = args.doc.read_text()
        rendered = findings_doc.render(text, found)
    except ArgumentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if rendered != text:
            print(f"{args.doc} differs from its rendering from {args.run}: run without --check",
                  file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(rendered)
    return 0


def load(run: Path) -> dict[str, dict]:
    path = run / "findings.json"
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArgumentError(f"no findings.json in {run} (python -m suites.findings RUN writes it)") from None
    except (OSError, ValueError) as e:
        raise ArgumentError(f"{path} is not readable JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(found, dict):
        raise ArgumentError(f"{path} holds no findings")
    return found


if __name__ == "__main__":
    sys.exit(main())
