"""attnbench doctor: the CPU run (as in CI), a broken variant failing, the findings kept with the run.
The planted bugs of tests/plugin_planted are tests/test_planted_bugs.py's."""

import json
from pathlib import Path

import pytest
import torch

from harness import contract, doctor, registry, store
from tests.test_report_fixtures import run_cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_every_variant_passes_or_says_why_not_on_the_cpu():
    result = doctor.run("cpu")
    checks = {c["variant"]: c for c in result["variants"]}
    assert set(checks) == set(registry.names())
    assert result["ok"] and all(c["status"] in ("pass", "unsupported") for c in checks.values())
    assert {checks[n]["status"] for n in ("vanilla", "mamba", "sparse-bigbird", "performer")} == {"pass"}
    cudnn = checks["flash-cudnn"]
    assert (cudnn["status"], cudnn["detail"]) == ("unsupported", "runs on cuda only")
    assert all(c["error"] < c["tolerance"] < 1e-3 for c in checks.values() if c["status"] == "pass")
    vanilla = {c["check"]: c for c in checks["vanilla"]["checks"]}
    assert set(vanilla) == set(contract.ATTENTION_CHECKS)
    assert all(c["status"] == "pass" for c in vanilla.values())
    mamba = {c["check"] for c in checks["mamba"]["checks"]}
    assert mamba == set(contract.MIXER_CHECKS)
    assert result["packages"]["torch"] == torch.__version__ and "mamba-ssm" in result["packages"]


def test_a_wrong_fast_path_fails_and_so_does_one_that_raises(monkeypatch):
    vanilla, linear = registry.get("vanilla"), registry.get("linear")
    monkeypatch.setattr(vanilla, "attention_fn", lambda q, k, v, causal=False: v)  # not attention
    monkeypatch.setattr(linear, "attention_fn", lambda q, k, v, causal=False, **p: 1 / 0)
    checks = {c.variant: c for c in (doctor.check(vanilla, "cpu"), doctor.check(linear, "cpu"))}
    assert checks["vanilla"].status == "fail" and checks["vanilla"].error > 0.1
    assert checks["vanilla"].detail.startswith("random: random N=128 causal against softmax: error")
    assert checks["linear"].status == "fail"
    assert checks["linear"].detail.startswith("random: ZeroDivisionError")
    assert "\n" not in checks["linear"].detail + checks["vanilla"].detail


@pytest.mark.slow
def test_cli_prints_one_table_keeps_the_findings_and_exits_1_on_a_failure(monkeypatch, capsys, tmp_path):
    chosen = ("-v", "vanilla", "-v", "sparse-fixed", "-v", "flash-cudnn")
    code, out, _ = run_cli(monkeypatch, capsys, "doctor", "--device", "cpu", "--out", tmp_path, *chosen)
    assert code == 0
    assert "sparse-fixed" in out and "nvidia-ml-py" in out and "unsupported" in out
    environment = json.loads((tmp_path / store.ENVIRONMENT).read_text())
    assert environment["device"] == "cpu" and environment["doctor"]["ok"] is True
    doctored = [c["variant"] for c in environment["doctor"]["variants"]]
    assert doctored == ["vanilla", "sparse-fixed", "flash-cudnn"]
    # A run into the same directory keeps them (the run checks the machine, it does not rewrite it).
    store.RunStore(tmp_path).open({"device": "cpu", "device_name": environment["device_name"]})
    assert "doctor" in json.loads((tmp_path / store.ENVIRONMENT).read_text())
    monkeypatch.setattr(registry.get("vanilla"), "attention_fn", lambda q, k, v, causal=False: 2 * v)
    code, out, _ = run_cli(monkeypatch, capsys, "doctor", "--device", "cpu", "-v", "vanilla")
    assert code == 1 and "fail" in out and "random: random N=128" in out


@pytest.mark.parametrize("args", [("--device", "tpu"), ("--device", "cpu", "-v", "no-such-variant")])
def test_bad_input_is_one_line_exit_2(monkeypatch, capsys, args):
    code, _, err = run_cli(monkeypatch, capsys, "doctor", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_the_doctor_reaches_variants_only_through_the_registry():
    source = (ROOT / "harness" / "doctor.py").read_text()
    assert "import variants" not in source and "from variants" not in source
    assert "registry.all_variants()" in source


def test_nox_bench_runs_the_doctor_first_into_the_run_directory():
    source = (ROOT / "noxfile.py").read_text()
    bench = source[source.index("def bench"):]
    assert bench.index('"doctor", "--out", out') < bench.index('"run", "--suite"')
