"""The report's Correctness section and `attnbench report --fail-on-incorrect`, on small synthetic runs;
the approximation error drawn apart from the implementation error. (The planted bugs, end to end, are
tests/test_planted_bugs.py's.)"""

import pytest

from harness import store
from harness.report import build, data
from harness.report.correctness import Correctness
from tests import test_report_fixtures as fx
from tests.test_report_fixtures import run_cli


def exactness_row(variant, kind="random", dtype="float32", within=True, status="ok", **metrics):
    config = {"suite": "accuracy", "variant": variant, "device": "cpu", "dtype": dtype, "params": "{}",
              "task": "exactness", "input_kind": kind, "seq_len": 128, "head_dim": 64, "causal": True}
    gate = {"checked_err": 1e-7 if within else 0.45, "tolerance": 1e-5, "within_tolerance": within,
            "check_detail": f"{kind}: {kind} N=128 causal against softmax: error "
                            f"{'1.0e-07 <=' if within else '4.5e-01 >'} tolerance 1.0e-05 ({dtype})"}
    measured = {"rel_err": 1e-7, "max_abs_err": 1e-7, "reference": "softmax"} if kind == "random" else {}
    return fx.row(config, status=status, **({**measured, **gate, **metrics} if status == "ok" else metrics))


def run_with(tmp_path, rows, doctor=None):
    path = fx.write_run(tmp_path / "run", rows)
    if doctor is not None:
        store.RunStore(path).update_environment(doctor=doctor)
    return path


def doctor_result(failed_variant=None):
    ok = {"variant": "vanilla", "status": "pass", "detail": "9 checks within tolerance", "backend": "vanilla",
          "dtype": "float32", "error": 1e-7, "tolerance": 1e-5, "checks": []}
    variants = [ok]
    if failed_variant:
        detail = "cross: Nq=65 Nk=128 causal against softmax: error 2.0e+00 > tolerance 7.8e-06 (float32)"
        variants.append({"variant": failed_variant, "status": "fail", "backend": "x", "dtype": "float32",
                         "detail": detail, "error": 2.0, "tolerance": 7.8e-6,
                         "checks": [{"check": "cross", "status": "fail", "dtype": "float32"}]})
    return {"device": "cpu", "variants": variants, "ok": failed_variant is None}


def test_rows_outside_tolerance_and_failed_checks_open_the_report_in_red(tmp_path):
    rows = [exactness_row("vanilla"), exactness_row("flash-sdpa", within=False),
            exactness_row("flash-sdpa", "no_visible_key", status="nonfinite",
                          reason="no_visible_key: Nq=128 Nk=64: NaN or Inf in 4096 of 16384 output values"),
            exactness_row("sparse-bigbird", "decode", status="error", reason="decode: IndexError: boom")]
    report = build([run_with(tmp_path, rows, doctor_result("linear"))])
    failures = report.correctness.failures
    assert report.correctness.failed
    assert set(zip(failures.variant, failures.source, failures.check, strict=True)) == {
        ("flash-sdpa", "exactness row", "random"), ("flash-sdpa", "exactness row", "no_visible_key"),
        ("sparse-bigbird", "exactness row", "decode"), ("linear", "doctor", "cross")}
    page = report.html.read_text()
    assert page.index('<section id="correctness">') < page.index('<section id="overview">')
    section = page[page.index('<section id="correctness">'):]
    section = section[:section.index("</section>")]
    assert 'class="incorrect"' in section and section.count('<tr class="incorrect">') == 4
    assert "4.5e-01 &gt; tolerance" in section and "nonfinite: no_visible_key: Nq=128" in section
    summary = report.markdown.read_text().splitlines()
    assert summary[2] == "### Correctness"
    assert summary[3].startswith("**❌ 4 correctness failures in 3 variants")
    table = "\n".join(summary[4:12])
    assert "❌ flash-sdpa | float32: no_visible_key, random" in table
    assert "❌ linear | - | - | cross:" in table


def test_every_check_within_tolerance_says_so_and_counts_what_was_judged(tmp_path):
    report = build([run_with(tmp_path, [exactness_row("vanilla"), exactness_row("flash-sdpa", "decode")],
                             doctor_result())])
    assert not report.correctness.failed and report.correctness.judged == 2
    assert report.markdown.read_text().splitlines()[3] == (
        "Every judged check within its tolerance: 2 exactness rows, 1 variants through the doctor.")


def test_rows_recorded_before_the_gate_are_counted_as_not_judged(tmp_path):
    old = {k: v for k, v in exactness_row("vanilla").items()
           if k not in ("checked_err", "tolerance", "within_tolerance", "check_detail")}
    correctness = Correctness.of(data.Results.load(run_with(tmp_path, [old])))
    assert not correctness.failed and (correctness.judged, correctness.unjudged) == (0, 1)
    assert correctness.sentence().startswith("Nothing judged")
    assert any("run the accuracy suite again" in n for n in correctness.notes())


@pytest.mark.parametrize("failing,code", [(False, 0), (True, 1)])
def test_fail_on_incorrect_exits_1_after_writing_the_report(monkeypatch, capsys, tmp_path, failing, code):
    run = run_with(tmp_path, [exactness_row("vanilla"), exactness_row("flash-sdpa", within=not failing)])
    exit_code, out, err = run_cli(monkeypatch, capsys, "report", run, "--fail-on-incorrect")
    assert exit_code == code and out.strip().endswith("report.html")
    assert (run / "report" / "summary.md").exists() and (run / "report" / "report.html").exists()
    assert ("1 correctness failure in 1 variant (flash-sdpa)" in err) == failing
    exit_code, _, _ = run_cli(monkeypatch, capsys, "report", run)  # without the flag: the report only
    assert exit_code == 0


def test_the_approximation_error_is_its_own_chart_and_never_the_implementation_error(tmp_path):
    approximate = exactness_row("linear", rel_err=0.7, impl_err=2e-7, checked_err=3e-7)
    before_the_gate = {k: v for k, v in exactness_row("performer", rel_err=0.9, impl_err=4e-7).items()
                       if k not in ("checked_err", "tolerance", "within_tolerance", "check_detail")}
    report = build([run_with(tmp_path, [exactness_row("vanilla"), approximate, before_the_gate])])
    exact = report.findings.exactness
    implementation = data.implementation_error(exact).set_index("variant").rel_err
    approximation = data.approximation_error(exact).set_index("variant").rel_err
    assert implementation.to_dict() == {"vanilla": 1e-7, "linear": 3e-7, "performer": 4e-7}
    assert approximation.to_dict() == {"linear": 0.7, "performer": 0.9}
    charts = {c.name: c for c in report.charts}
    assert {"exactness", "approximation"} <= set(charts)
    assert charts["approximation"].title == "Approximation error" and "not a fault" in charts[
        "approximation"].caption
    assert report.correctness.judged == 2 and not report.correctness.failed
