"""The correctness gate against plugins with planted bugs (tests/plugin_planted): ten exact softmax
attentions with one classic kernel bug each, and a correct one. Every bug must be caught by the contract's
checks, by the doctor, by the exactness rows, by the report's Correctness section and by
`attnbench report --fail-on-incorrect`; the correct one must pass them all.
"""

import importlib
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import contract, doctor, registry, runner, store
from harness.context import RunContext
from suites import accuracy as A
from suites.exactness import ExactnessCase
from tests.test_plugins import attnbench

ROOT = Path(__file__).resolve().parent.parent
PLANTED = ROOT / "tests" / "plugin_planted"
CORRECT = "planted-correct"
# Each bug and the checks that fail it at float32 (at bfloat16 the same, but for the half-precision
# accumulation: bfloat16 arithmetic is right in a bfloat16 call).
REFERENCE = contract.REFERENCE_KINDS
BUGS = {
    "planted-missing-scale": (*REFERENCE, "cross", "no_visible_key", "decode"),
    "planted-causal-offset": ("cross", "no_visible_key", "decode"),
    "planted-nan-empty-row": ("cross", "no_visible_key"),
    "planted-uniform-empty-row": ("cross", "no_visible_key"),
    "planted-wrong-axis": (*REFERENCE, "cross", "no_visible_key", "decode"),
    "planted-window-off-by-one": (*REFERENCE, "cross", "no_visible_key", "decode"),
    "planted-half-accumulation": (*REFERENCE, "cross", "no_visible_key", "decode"),
    "planted-no-max-subtraction": ("large_logits",),
    "planted-decode-drops-last-key": ("decode",),
    "planted-transposed-output": (*REFERENCE, "cross", "no_visible_key", "causality"),
}
NAMES = (CORRECT, *BUGS)


@pytest.fixture(scope="module")
def planted():
    """The plugin's variants registered in this process for the module's tests, then removed again."""
    registry.names()  # the installed plugins first
    saved = dict(registry._REGISTRY)
    sys.path.insert(0, str(PLANTED))
    try:
        importlib.import_module("attnbench_planted")
        yield {name: registry.get(name) for name in NAMES}
    finally:
        sys.path.remove(str(PLANTED))
        sys.modules.pop("attnbench_planted", None)
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)


def test_the_half_precision_bug_fails_float32_calls_only(planted):
    v = planted["planted-half-accumulation"]
    fp32, bf16 = (contract.run(v, "random", contract.Setting(n=128, dtype=d)) for d in (torch.float32,
                                                                                        torch.bfloat16))
    assert not fp32.passed and fp32.error > 100 * fp32.tolerance  # bf16's rounding, far beyond float32's
    assert bf16.passed  # in a bfloat16 call, bfloat16 arithmetic is what the caller asked for


@pytest.mark.parametrize("name", NAMES)
def test_the_contract_through_the_doctor_fails_each_bug_by_the_checks_that_catch_it(planted, name):
    """The doctor runs each of the contract's checks at float32 and N = 128 (long: 1024) on the CPU
    (contract.run, as a test of the contract alone did at the same setting): exactly the bug's checks fail,
    and the doctor says so in one line naming the first."""
    check = doctor.check(planted[name], "cpu")
    assert {c["check"] for c in check.checks} == set(contract.applicable(planted[name]))
    assert {c["dtype"] for c in check.checks} == {"float32"}
    assert all(c["status"] != "unsupported" for c in check.checks)  # every check ran: the plugins support all
    failed = {c["check"] for c in check.checks if c["status"] == "fail"}
    assert failed == set(BUGS.get(name, ())), check.checks
    if name == CORRECT:
        assert check.status == "pass", check.detail
        return
    first = next(c for c in contract.applicable(planted[name]) if c in BUGS[name])
    assert check.status == "fail" and check.detail.startswith(f"{first}: ") and "\n" not in check.detail


def exactness_rows(name: str) -> pd.DataFrame:
    """The quick profile's exactness cases of one variant at float32 and N = 128, run in this process."""
    cases = [c for c in A.plan("quick", "cpu", variants=[name], dtypes=["float32"], seq_lens=[128])
             if isinstance(c, ExactnessCase)]
    rows = []
    for case in cases:
        status, reason, metrics = runner.execute("suites.accuracy", case, RunContext())
        rows.append({"input_kind": case.input_kind, "causal": case.causal, "kv_heads": case.kv_heads,
                     "status": status, "reason": reason, **metrics})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("name", NAMES)
def test_the_exactness_rows_say_which_check_failed(planted, name):
    rows = exactness_rows(name)
    # The plugin declares no grouped KV heads: its grouped checks are unsupported rows that say so.
    grouped = rows[rows.kv_heads.notna()]
    assert len(grouped) and (grouped.status == "unsupported").all()
    assert grouped.reason.str.contains("kv_heads=").all()
    assert grouped.reason.str.contains("not declared").all()
    rows = rows[rows.kv_heads.isna()]
    planned = set(contract.ATTENTION_CHECKS) - {"long"}  # long runs at 1024
    assert set(rows.input_kind) == planned and (rows.status != "unsupported").all()
    ok = rows[rows.status == "ok"]
    lines = zip(ok.input_kind, ok.check_detail, strict=True)
    assert all(d.startswith(f"{k}: ") and "\n" not in d for k, d in lines)  # one line, naming its check
    judged_wrong = set(ok[~ok.within_tolerance.astype(bool)].input_kind)
    nonfinite = rows[rows.status == "nonfinite"]
    assert all(r.startswith(f"{k}: ") for k, r in zip(nonfinite.input_kind, nonfinite.reason, strict=True))
    assert (rows.status.isin(["ok", "nonfinite"])).all(), rows[["input_kind", "status", "reason"]]
    assert judged_wrong | set(nonfinite.input_kind) == set(BUGS.get(name, ())) & planned


# --- installed as a user would, through the command line ------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The plugin on the path of a subprocess with a dist-info declaring its entry point (as installed)."""
    site = tmp_path_factory.mktemp("planted-site")
    (site / "attnbench_planted.py").write_text((PLANTED / "attnbench_planted.py").read_text())
    info = site / "attnbench_planted_bugs-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: attnbench-planted-bugs\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[attnbench.variants]\nplanted = attnbench_planted\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "COLUMNS": "250"}


def gate(names, out: Path, env: dict):
    """doctor, the accuracy suite's float32 exactness cases at N = 128, and the report --fail-on-incorrect."""
    chosen = [arg for name in names for arg in ("-v", name)]
    checked = attnbench("doctor", "--device", "cpu", "--out", str(out), *chosen, env=env)
    ran = attnbench("run", "--suite", "accuracy", "--profile", "quick", "--device", "cpu", "--dtype",
                    "float32", "-n", "128", "--no-progress", "--out", str(out), *chosen, env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]
    report = attnbench("report", str(out), "--fail-on-incorrect", env=env)
    return checked, report


@pytest.mark.slow  # three commands, each an interpreter
def test_every_planted_bug_is_named_in_the_report_and_fails_the_gate(installed, tmp_path):
    out = tmp_path / "bugs"
    checked, report = gate(BUGS, out, installed)
    assert checked.returncode == 1 and all(name in checked.stdout for name in BUGS)
    assert report.returncode == 1, report.stderr[-2000:]
    assert "correctness failure" in report.stderr and "Traceback" not in report.stderr
    summary = (out / "report" / "summary.md").read_text()
    section = summary[summary.index("### Correctness"):summary.index("Rows:")]  # it opens the summary
    for name in BUGS:
        assert f"❌ {name}" in section, name
    page = (out / "report" / "report.html").read_text()
    correctness = page[page.index('<section id="correctness">'):page.index("</section>")]
    assert page.index('<section id="correctness">') < page.index('<section id="overview">')
    for name in BUGS:
        assert name in correctness and 'class="incorrect"' in correctness
    rows = store.load(out)
    exact = rows[rows.task == "exactness"]
    for name, checks in BUGS.items():
        mine = exact[exact.variant == name]
        wrong = mine[(mine.status == "nonfinite") | (mine.within_tolerance == False)]  # noqa: E712
        assert set(wrong.input_kind) == set(checks) - {"long"}, name  # long runs at 1024, not at -n 128


@pytest.mark.slow  # three commands, each an interpreter
def test_a_correct_exact_plugin_passes_the_gate(installed, tmp_path):
    out = tmp_path / "correct"
    checked, report = gate([CORRECT], out, installed)
    assert checked.returncode == 0, checked.stdout[-2000:]
    assert report.returncode == 0, report.stderr[-2000:]
    summary = (out / "report" / "summary.md").read_text()
    assert "Every judged check within its tolerance" in summary and "❌" not in summary
