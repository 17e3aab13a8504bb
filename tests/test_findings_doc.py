"""Known results generated, not copied: docs/findings.md equals its rendering from the committed run's
findings.json, and a drifted figure, a bad quote or a missing run are caught."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ArgumentError
from harness.report import findings_doc

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "results" / "reference" / "cpu-standard-intel-xeon-2core"
DOC = ROOT / "docs" / "findings.md"
SCRIPT = ROOT / "scripts" / "findings_doc.py"


def committed() -> dict:
    return json.loads((RUN / "findings.json").read_text())


def test_the_documented_findings_are_the_generated_ones():
    text = DOC.read_text()
    assert findings_doc.render(text, committed()) == text
    assert findings_doc.table(committed()) in text  # the table between the markers, whole


def test_a_drifted_figure_is_rewritten():
    text = DOC.read_text()
    spec = "selective_copying variant=mamba steps_to_criterion"
    quoted = f"<!-- figure {spec} -->{findings_doc.figure(spec, committed())}<!-- /figure -->"
    assert quoted in text
    drifted = text.replace(quoted, f"<!-- figure {spec} -->1,500-2,500<!-- /figure -->")
    assert findings_doc.render(drifted, committed()) == text


def test_figures_are_read_from_the_findings_tables():
    found = {"x": {"verdict": "reproduced", "table": [
        {"variant": "a", "kv_pairs": 2, "mean": 0.5, "low": 0.4, "high": 0.6, "n_seeds": 3,
         "steps_to_criterion": [2200, 1500, None], "baseline": 0.25},
        {"variant": "a", "kv_pairs": 8, "mean": 0.1, "low": 0.0, "high": 0.2, "n_seeds": 5}]}}
    assert findings_doc.figure("x variant=a kv_pairs=2 accuracy", found) == "0.500 [0.400, 0.600] (n=3)"
    assert findings_doc.figure("x variant=a kv_pairs=2.0 steps_to_criterion", found) == (
        "1,500, 2,200 and not reached")
    assert findings_doc.figure("x variant=a kv_pairs=2 baseline", found) == "0.250"
    assert findings_doc.figure("x verdict", found) == "reproduced"
    for spec, message in (("x variant=a accuracy", "2 rows"), ("y verdict", "give a finding"),
                          ("x variant=a kv_pairs=2 nothing", "no column"), ("x kv accuracy", "COLUMN=VALUE"),
                          ("x nothing", "no field")):
        with pytest.raises(ArgumentError, match=message):
            findings_doc.figure(spec, found)
    with pytest.raises(ArgumentError, match="block"):
        findings_doc.render("no markers here", found)


def load_script():
    spec = importlib.util.spec_from_file_location("findings_doc_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


def run_script(script, capsys, *args) -> subprocess.CompletedProcess:
    """The script's main in this process (each interpreter of its own costs seconds of imports): its exit
    code and what it printed. The process boundary is the test below's."""
    capsys.readouterr()
    code = script.main([str(a) for a in args])
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, printed.out, printed.err)


@pytest.mark.slow  # the script in an interpreter of its own
def test_the_script_runs_alone_and_exits_2_with_one_line(tmp_path):
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope"), "--check"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert "no findings.json" in missing.stderr and "Traceback" not in missing.stderr


def test_the_script_checks_writes_and_rejects_bad_input_with_one_line(script, capsys, tmp_path):
    assert run_script(script, capsys, RUN, "--check").returncode == 0
    doc = tmp_path / "findings.md"
    doc.write_text(DOC.read_text().replace("<!-- figure listops variant=linear accuracy -->",
                                           "<!-- figure listops variant=linear accuracy -->9.999 "))
    drifted = run_script(script, capsys, RUN, "--doc", doc, "--check")
    assert drifted.returncode == 1 and "differs from its rendering" in drifted.stderr
    assert run_script(script, capsys, RUN, "--doc", doc).returncode == 0
    assert doc.read_text() == DOC.read_text()
    missing = run_script(script, capsys, tmp_path / "nope", "--check")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no findings.json" in missing.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "findings.json").write_text(json.dumps(committed()))
    bad = tmp_path / "bad.md"
    bad.write_text("<!-- figure mqar variant=nobody accuracy -->x<!-- /figure -->")
    out = run_script(script, capsys, tmp_path / "run", "--doc", bad)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "block" in out.stderr
    table = run_script(script, capsys, RUN, "--table")
    assert table.returncode == 0 and table.stdout.startswith("| finding | verdict | reason | seeds |")
