"""Bad input to every command: exit code 2 and one line that names the argument (or the file) and what
would be accepted; never a traceback, never a silent wrong answer.

BATTERY holds the bad inputs, one test each; the property test at the end throws random argument lists
at every command of the app. Real measurement is not what these tests are about: where an argument list
would start one, `runner.run` is replaced by a stub that records what it was asked.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import cli, errors, plugins, runner, store
from harness.report import charts
from harness.suite import load_suite
from tests import test_report_fixtures as fx

TRACEBACK = "Traceback (most recent call last)"
ONE_LINE = re.compile(r"attnbench: error: [^\n]+\n")


def forward_rows(variants=("vanilla", "flash-sdpa"), max_n=4096):
    return [r for r in fx.throughput_rows() if r["mode"] == "fwd" and r["dtype"] == "bfloat16" and r["causal"]
            and r["variant"] in variants and r["seq_len"] <= max_n]


def valid_case() -> dict:
    from suites.throughput import planning

    return planning.plan("quick", "cpu", ["vanilla"])[0].model_dump(mode="json")


def benchmark(case=None, environment=None, stats=None) -> dict:
    info = {"case": valid_case() if case is None else case, "started_at": "2026-01-01T00:00:00+00:00",
            "finished_at": "2026-01-01T00:00:01+00:00",
            "environment": fx.environment() if environment is None else environment}
    bench = {"extra_info": info}
    if stats is not None:
        bench["stats"] = stats
    return {"benchmarks": [bench]}


# Malformed pytest-benchmark files for `import-benchmark`: name -> content.
JSONS = {
    "empty": "", "spaces": "   \n", "binary": b"\xff\xfe\x00\x81garbage",
    "truncated": '{"benchmarks": [{"ext',
    "list": "[]", "null": "null", "number": "3", "string": '"benchmarks"', "nan": '{"benchmarks": NaN}',
    "deep": "[" * 100_000 + "]" * 100_000,
    "benchmarks_number": '{"benchmarks": 3}', "benchmarks_object": '{"benchmarks": {}}',
    "no_benchmarks": '{"machine_info": {}}', "benchmark_number": '{"benchmarks": [1]}',
    "benchmark_empty": '{"benchmarks": [{}]}', "extra_info_null": '{"benchmarks": [{"extra_info": null}]}',
    "extra_info_empty": '{"benchmarks": [{"extra_info": {}}]}',
}


def json_files() -> dict[str, str | bytes]:
    """The files above, plus those that need a real case: wrong fields, an unknown variant, no stats."""
    files = dict(JSONS)
    case = valid_case()
    files["case_empty"] = json.dumps(benchmark(case={}, stats={}))
    files["case_unknown_variant"] = json.dumps(benchmark(case={**case, "variant": "nope"}, stats={}))
    files["case_bad_seq_len"] = json.dumps(benchmark(case={**case, "seq_len": -4}, stats={}))
    files["no_stats"] = json.dumps(benchmark())
    files["stats_empty"] = json.dumps(benchmark(stats={}))
    files["environment_string"] = json.dumps(benchmark(environment="gpu-1", stats={}))
    return files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Paths the bad inputs refer to (read-only use: tests that change a run make their own)."""
    root = tmp_path_factory.mktemp("inputs")
    paths = {"RUN": fx.write_run(root / "run", forward_rows()),  # throughput, 3 lengths
             "ACC": fx.write_run(root / "acc", fx.accuracy_rows()),  # accuracy only
             "EMPTY": root / "empty", "NORUN": root / "norun", "FILE": root / "file.txt"}
    (root / "empty" / "records").mkdir(parents=True)
    (root / "norun" / "notes").mkdir(parents=True)
    paths["FILE"].write_text("not a directory\n")
    for name, content in json_files().items():
        path = root / f"{name}.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths[f"JSON:{name}"] = path
    return paths


def use_fake_suite(monkeypatch) -> None:
    """`--suite fake` is tests/fake_suite.py (the real suites come through entry points)."""
    real = plugins.suite

    def suite(name):
        return load_suite("tests.fake_suite") if name == "fake" else real(name)

    monkeypatch.setattr(plugins, "suite", suite)


def run_cli(monkeypatch, capsys, args) -> tuple[int, str, str]:
    """The attnbench command line, in-process: (exit code, stdout, stderr)."""
    return fx.run_cli(monkeypatch, capsys, *args)


def no_doctor(monkeypatch) -> None:
    """The doctor's parity smoke of every variant takes half a minute: here it finds nothing wrong at once
    (its own tests run it for real)."""
    from harness import doctor

    def healthy(device, *args, **kwargs):
        return {**doctor.machine(device), "packages": doctor.packages(), "variants": [], "ok": True}

    monkeypatch.setattr(doctor, "run", healthy)


def no_frontier(monkeypatch) -> None:
    """`run --find-max-n` probes the machine's memory for minutes: here its arguments are checked as for
    real (frontier_plan) and nothing is probed (its own tests run it)."""
    from suites import frontier
    from suites.throughput import suite

    def plan_only(device, profile, out, variants=None, dtypes=None, memory_gb=None, time_cap_s=None,
                  console=None, lengths=None):
        frontier.frontier_plan(device, profile, variants, dtypes, memory_gb,
                               time_cap_s or frontier.DEFAULT_FRONTIER_TIME_CAP_S)
        return []

    monkeypatch.setattr(suite, "find_max_n", plan_only)


class NoRun:
    """Stands in for runner.run: a test that reaches it with bad input has found a hole in validation."""

    def __init__(self):
        self.calls = []

    def __call__(self, cases, suite_module, out, **options):
        self.calls.append((cases, out, options))
        Path(out).mkdir(parents=True, exist_ok=True)
        return runner.RunSummary(out=Path(out), counts={"ok": len(cases)})


def expand(args, inputs, tmp_path) -> list[str]:
    def one(arg):
        for key, path in inputs.items():
            arg = arg.replace("{" + key + "}", str(path))
        return arg.replace("{TMP}", str(tmp_path))
    return [one(a) for a in args]


RUN = ["run", "--suite", "throughput", "--device", "cpu", "--out", "{TMP}/out"]
LEARNED = ["run", "--suite", "accuracy", "--device", "cpu", "--out", "{TMP}/out"]
LONG = "n" * 300
# (id, arguments, what the one line must say). {NAME} is a path from the `inputs` fixture, {TMP} the
# test's own temporary directory.
BATTERY = [
    # -- run ------------------------------------------------------------------------------------------
    ("run-suite-unknown", ["run", "--suite", "nope"], "unknown suite 'nope'; choose one of"),
    ("run-suite-empty", ["run", "--suite", ""], "unknown suite ''"),
    ("run-suite-case", ["run", "--suite", "Throughput"], "unknown suite 'Throughput'"),
    ("run-suite-missing", ["run"], "Missing option '--suite'"),
    ("run-suite-no-value", ["run", "--suite"], "Option '--suite' requires an argument"),
    ("run-device-unknown", [*RUN, "--device", "tpu"], r"unknown device 'tpu' \(--device\); use cpu, cuda"),
    ("run-device-empty", [*RUN, "--device", ""], "unknown device ''"),
    ("run-device-index", [*RUN, "--device", "cuda:0"], "unknown device 'cuda:0'"),
    ("run-profile-unknown", [*RUN, "--profile", "huge"],
     r"unknown profile 'huge' \(--profile\); use quick, standard, full"),
    ("run-profile-case", [*RUN, "--profile", "QUICK"], "unknown profile 'QUICK'"),
    ("run-profile-empty", [*RUN, "--profile", ""], "unknown profile ''"),
    ("run-variant-unknown", [*RUN, "-v", "nosuch"], "unknown variant 'nosuch'; valid names: "),
    ("run-variant-empty", [*RUN, "-v", ""], "unknown variant ''"),
    ("run-variant-second", [*RUN, "-v", "vanilla", "-v", "vanila"], "unknown variant 'vanila'"),
    ("run-variant-no-value", [*RUN, "-v"], "Option '-v' requires an argument"),
    ("run-seq-len-zero", [*RUN, "-n", "0"], "--seq-len must be between 1 and 16777216, got 0"),
    ("run-seq-len-negative", [*RUN, "-n", "-5"], "--seq-len must be between 1 and 16777216, got -5"),
    ("run-seq-len-huge", [*RUN, "-n", "1" + "0" * 30], r"--seq-len must be between 1 and 16777216, got 1000"),
    ("run-seq-len-just-over", [*RUN, "-n", str(2**24 + 1)], "got 16777217"),
    ("run-seq-len-one-bad", [*RUN, "-n", "128", "-n", "-1"], "got -1"),
    ("run-seq-len-text", [*RUN, "-n", "abc"],
     "Invalid value for '--seq-len' / '-n': Input should be a valid integer"),
    ("run-seq-len-float", [*RUN, "-n", "1.5"], "Invalid value for '--seq-len' / '-n'"),
    ("run-seq-len-empty", [*RUN, "-n", ""], "Invalid value for '--seq-len' / '-n'"),
    ("run-seq-len-filtered-out", ["run", "--suite", "accuracy", "--device", "cpu", "-n", "7"],
     "the filters leave no case to run"),
    ("run-seeds-negative", [*LEARNED, "--seeds", "-1"], "--seeds must be between 0 and 100, got -1"),
    ("run-seeds-huge", [*LEARNED, "--seeds", "1" + "0" * 30], "--seeds must be between 0 and 100"),
    ("run-seeds-text", [*LEARNED, "--seeds", "three"], "Invalid value for '--seeds'"),
    ("run-seeds-throughput", [*RUN, "--seeds", "3"], "--seeds applies to the learned-task suites"),
    ("run-finding-unknown", [*LEARNED, "--finding", "nope"], "unknown finding 'nope'; choose one of: mqar"),
    ("run-finding-empty", [*LEARNED, "--finding", ""], "unknown finding ''"),
    ("run-criterion-zero", [*LEARNED, "--criterion", "0"], r"--criterion must be in \(0, 1\], got 0"),
    ("run-criterion-above-one", [*LEARNED, "--criterion", "1.01"], r"--criterion must be in \(0, 1\]"),
    ("run-criterion-nan", [*LEARNED, "--criterion", "nan"], r"--criterion must be in \(0, 1\], got nan"),
    ("run-find-max-n-seeds", [*RUN, "--find-max-n", "--seeds", "2"], "--find-max-n takes no --seeds"),
    ("run-dtype-unknown", [*RUN, "--dtype", "float8"], "--dtype: unknown dtype 'float8'"),
    ("run-dtype-empty", [*RUN, "--dtype", ""], "--dtype: unknown dtype ''"),
    ("run-dtype-int", [*RUN, "--dtype", "int32"], "--dtype: unknown dtype 'int32'"),
    ("run-dtype-torch-prefix-typo", [*RUN, "--dtype", "torch.float8"], "unknown dtype 'torch.float8'"),
    ("run-dtype-not-on-cpu", [*RUN, "--dtype", "fp16"], "float16"),
    ("run-mode-unknown", [*RUN, "--mode", "bwd"], "--mode: no case of this plan has bwd; it has decode, fwd"),
    ("run-level-unknown", [*RUN, "--level", "block"],
     "--level: no case of this plan has block; it has kernel"),
    ("run-mode-learned", [*LEARNED, "--mode", "fwd"], "--mode applies to the throughput suite"),
    ("run-kv-heads-learned", [*LEARNED, "--kv-heads", "2"],
     "--kv-heads applies to the throughput suite, not to accuracy"),
    ("run-lengths-learned", [*LEARNED, "--lengths", "chat"],
     "--lengths applies to the throughput suite, not to accuracy"),
    ("run-compile-long-range", ["run", "--suite", "long-range", "--device", "cpu", "--compile"],
     "--compile applies to the throughput and accuracy suites, not to long-range"),
    ("run-kind-unknown", [*RUN, "--kind", "frontier"], "--kind: no case of this plan has frontier"),
    ("run-find-max-n-mode", [*RUN, "--find-max-n", "--mode", "fwd"], "--find-max-n takes no --mode"),
    ("run-timeout-negative", [*RUN, "--timeout", "-1"], "--timeout must be a number greater than 0"),
    ("run-timeout-zero", [*RUN, "--timeout", "0"], "--timeout must be a number greater than 0 and at most"),
    ("run-timeout-nan", [*RUN, "--timeout", "nan"], "--timeout must be a number greater than 0.*got nan"),
    ("run-timeout-inf", [*RUN, "--timeout", "inf"], "got inf"),
    ("run-timeout-minus-inf", [*RUN, "--timeout", "-inf"], "got -inf"),
    ("run-timeout-too-long", [*RUN, "--timeout", "1e300"], "at most 604800 s, got 1e\\+300"),
    ("run-timeout-text", [*RUN, "--timeout", "abc"],
     "Invalid value for '--timeout': Input should be a valid number"),
    ("run-timeout-empty", [*RUN, "--timeout", ""], "Invalid value for '--timeout'"),
    ("run-retry-unknown", [*RUN, "--retry", "sometimes"],
     r"unknown retry 'sometimes' \(--retry\); use failed, none, all"),
    ("run-retry-empty", [*RUN, "--retry", ""], "unknown retry ''"),
    ("run-retry-case", [*RUN, "--retry", "FAILED"], "unknown retry 'FAILED'"),
    ("run-out-file", [*RUN, "--out", "{FILE}"], "--out .*file.txt is a file; give a directory"),
    ("run-out-under-file", [*RUN, "--out", "{FILE}/sub/dir"], "file.txt is a file, not a directory"),
    ("run-out-empty", [*RUN, "--out", ""], "--out is empty; give a path"),
    ("run-out-blank", [*RUN, "--out", "   "], "--out is empty"),
    ("run-out-long-name", [*RUN, "--out", f"{{TMP}}/{LONG}"], "is too long \\(at most 255 bytes\\)"),
    ("run-out-long-path", [*RUN, "--out", "{TMP}/" + "/".join(["d" * 200] * 25)],
     "--out is too long \\(.* characters; a path has at most 4096\\)"),
    ("run-out-nul", [*RUN, "--out", "{TMP}/a\0b"], "--out holds a NUL character"),
    ("run-out-proc", [*RUN, "--out", "/proc/attnbench-test/run"], "/proc/attnbench-test/run"),
    ("run-fresh-not-a-run", [*RUN, "--out", "{NORUN}", "--fresh"], "--fresh: .*norun is not a run directory"),
    ("run-unknown-option", [*RUN, "--foo"], "No such option: --foo"),
    ("run-extra-argument", [*RUN, "extra"], r"Got unexpected extra argument\(s\) \(extra\)"),
    ("run-progress-value", [*RUN, "--progress", "maybe"], r"Got unexpected extra argument\(s\) \(maybe\)"),
    ("run-long-range-profile", ["run", "--suite", "long-range", "--device", "cpu", "--profile", "x"],
     "unknown profile 'x'"),
    # -- import-benchmark -----------------------------------------------------------------------------
    ("import-missing-file", ["import-benchmark", "{TMP}/none.json", "--out", "{TMP}/o"], "no such file"),
    ("import-directory", ["import-benchmark", "{TMP}", "--out", "{TMP}/o"], "is not a file"),
    ("import-empty-name", ["import-benchmark", "", "--out", "{TMP}/o"], "JSON_FILE is empty"),
    ("import-no-out", ["import-benchmark", "{JSON:list}"], "Missing option '--out'"),
    ("import-out-file", ["import-benchmark", "{JSON:list}", "--out", "{FILE}"],
     "is a file; give a directory"),
    ("import-out-empty", ["import-benchmark", "{JSON:list}", "--out", ""], "--out is empty"),
    ("import-no-argument", ["import-benchmark"], "Missing argument 'json_file'"),
    *[(f"import-json-{name}", ["import-benchmark", f"{{JSON:{name}}}", "--out", "{TMP}/o"], expected)
      for name, expected in {
          "empty": "empty.json is not JSON: Expecting value", "spaces": "spaces.json is not JSON",
          "binary": "binary.json is not JSON", "truncated": "truncated.json is not JSON",
          "list": "list.json is not a pytest-benchmark JSON file",
          "null": "null.json is not a pytest-benchmark", "number": "number.json is not a pytest-benchmark",
          "string": "string.json is not a pytest-benchmark",
          "nan": "nan.json is not a pytest-benchmark", "deep": "deep.json is not JSON: nested too deeply",
          "benchmarks_number": "benchmarks_number.json is not a pytest-benchmark",
          "benchmarks_object": "benchmarks_object.json is not a pytest-benchmark",
          "no_benchmarks": "no_benchmarks.json is not a pytest-benchmark",
          "benchmark_number": "benchmark_number.json is not a JSON of suites/bench_throughput.py",
          "benchmark_empty": "benchmark_empty.json is not a JSON of .*missing 'extra_info'",
          "extra_info_null": "extra_info_null.json is not a JSON of",
          "extra_info_empty": "extra_info_empty.json is not a JSON of .*missing 'case'",
          "case_empty": "case_empty.json is not a JSON of .*ValidationError",
          "case_unknown_variant": "case_unknown_variant.json is not a JSON of .*unknown variant 'nope'",
          "case_bad_seq_len": "case_bad_seq_len.json is not a JSON of",
          "no_stats": "no_stats.json is not a JSON of .*missing 'stats'",
          "stats_empty": "stats_empty.json is not a JSON of",
          "environment_string": "environment_string.json is not a JSON of",
      }.items()],
    # -- report ---------------------------------------------------------------------------------------
    ("report-missing", ["report", "{TMP}/nonexistent"], "RESULTS: no such directory: .*nonexistent"),
    ("report-file", ["report", "{FILE}"], "RESULTS .*file.txt is a file; give a run directory"),
    ("report-empty-name", ["report", ""], "RESULTS is empty"),
    ("report-no-argument", ["report"], "Missing argument 'results'"),
    ("report-empty-run", ["report", "{EMPTY}"], "no result rows under .*empty: run `attnbench run` first"),
    ("report-no-run", ["report", "{NORUN}"], "no result rows under .*norun"),
    ("report-one-missing-of-two", ["report", "{RUN}", "{TMP}/gone"], "no such directory: .*gone"),
    ("report-compare-missing", ["report", "{RUN}", "--compare", "{TMP}/gone"],
     "--compare: no such directory"),
    ("report-compare-file", ["report", "{RUN}", "--compare", "{FILE}"], "--compare .*file.txt is a file"),
    ("report-compare-empty-name", ["report", "{RUN}", "--compare", ""], "--compare is empty"),
    ("report-compare-empty-run", ["report", "{RUN}", "--compare", "{EMPTY}", "--out", "{TMP}/r"],
     "no result rows under the baseline"),
    ("report-compare-other-suite", ["report", "{RUN}", "--compare", "{ACC}", "--out", "{TMP}/r"],
     "--compare .*acc shares no measured case with .*run"),
    ("report-threshold-zero", ["report", "{RUN}", "--threshold", "0"], "--threshold must be between 0 and 1"),
    ("report-threshold-one", ["report", "{RUN}", "--threshold", "1"], "got 1$"),
    ("report-threshold-percent", ["report", "{RUN}", "--threshold", "5"], "got 5$"),
    ("report-threshold-negative", ["report", "{RUN}", "--threshold", "-0.1"], "got -0.1"),
    ("report-threshold-nan", ["report", "{RUN}", "--threshold", "nan"], "got nan"),
    ("report-threshold-inf", ["report", "{RUN}", "--threshold", "inf"], "got inf"),
    ("report-threshold-text", ["report", "{RUN}", "--threshold", "5%"], "Invalid value for '--threshold'"),
    ("report-pareto-negative", ["report", "{RUN}", "--pareto-n", "-1"], "--pareto-n must be between 1 and"),
    ("report-pareto-zero", ["report", "{RUN}", "--pareto-n", "0"], "--pareto-n must be between 1 and"),
    ("report-pareto-huge", ["report", "{RUN}", "--pareto-n", "9" * 40], "--pareto-n must be between"),
    ("report-pareto-absent", ["report", "{RUN}", "--pareto-n", "999999", "--out", "{TMP}/r"],
     "--pareto-n 999999: no quality-vs-throughput chart at that length; the results need throughput and "
     "accuracy rows"),
    ("report-out-file", ["report", "{RUN}", "--out", "{FILE}"], "--out .*file.txt is a file"),
    ("report-out-under-file", ["report", "{RUN}", "--out", "{FILE}/r"], "is a file, not a directory"),
    ("report-out-empty", ["report", "{RUN}", "--out", ""], "--out is empty"),
    ("report-out-long", ["report", "{RUN}", "--out", f"{{TMP}}/{LONG}"], "is too long"),
    ("report-unknown-option", ["report", "{RUN}", "--format", "pdf"], "No such option: --format"),
    # -- recommend ------------------------------------------------------------------------------------
    ("recommend-missing", ["recommend", "{TMP}/gone", "-n", "1024"], "RESULTS: no such directory"),
    ("recommend-file", ["recommend", "{FILE}", "-n", "1024"], "is a file; give a run directory"),
    ("recommend-empty-name", ["recommend", "", "-n", "1024"], "RESULTS is empty"),
    ("recommend-no-seq-len", ["recommend", "{RUN}"], "Missing option '--context'"),
    ("recommend-seq-len-zero", ["recommend", "{RUN}", "-n", "0"], "--context must be between 1 and"),
    ("recommend-seq-len-negative", ["recommend", "{RUN}", "-n", "-1024"], "got -1024"),
    ("recommend-seq-len-huge", ["recommend", "{RUN}", "-n", "1" + "0" * 30], "--context must be between"),
    ("recommend-seq-len-text", ["recommend", "{RUN}", "-n", "4k"],
     "Invalid value for '--context' / '--seq-len' / '-n'"),
    ("recommend-memory-zero", ["recommend", "{RUN}", "-n", "1024", "--memory-gb", "0"],
     "--memory-gb must be a number greater than 0, got 0"),
    ("recommend-memory-negative", ["recommend", "{RUN}", "-n", "1024", "--memory-gb", "-40"], "got -40"),
    ("recommend-memory-nan", ["recommend", "{RUN}", "-n", "1024", "--memory-gb", "nan"], "got nan"),
    ("recommend-memory-inf", ["recommend", "{RUN}", "-n", "1024", "--memory-gb", "inf"], "got inf"),
    ("recommend-latency-zero", ["recommend", "{RUN}", "-n", "1024", "--latency-ms", "0"],
     "--latency-ms must be a number greater than 0, got 0"),
    ("recommend-latency-negative", ["recommend", "{RUN}", "-n", "1024", "--latency-ms", "-5"], "got -5"),
    ("recommend-latency-nan", ["recommend", "{RUN}", "-n", "1024", "--latency-ms", "nan"], "got nan"),
    ("recommend-accuracy-above-one", ["recommend", "{RUN}", "-n", "1024", "--min-accuracy", "1.5"],
     "--min-accuracy is a fraction in 0..1, got 1.5"),
    ("recommend-accuracy-negative", ["recommend", "{RUN}", "-n", "1024", "--min-accuracy", "-0.1"],
     "got -0.1"),
    ("recommend-accuracy-nan", ["recommend", "{RUN}", "-n", "1024", "--min-accuracy", "nan"], "got nan"),
    ("recommend-accuracy-percent", ["recommend", "{RUN}", "-n", "1024", "--min-accuracy", "90"], "got 90"),
    ("recommend-mode-unknown", ["recommend", "{RUN}", "-n", "1024", "--mode", "fast"],
     r"unknown mode 'fast' \(--mode\); use train, infer"),
    ("recommend-dtype-unknown", ["recommend", "{RUN}", "-n", "1024", "--dtype", "fp8"],
     "--dtype: unknown dtype 'fp8'"),
    ("recommend-empty-run", ["recommend", "{EMPTY}", "-n", "1024"], "no result rows under .*empty"),
    ("recommend-length-not-measured", ["recommend", "{RUN}", "-n", "3000"], "3000"),
    ("recommend-accuracy-without-rows",
     ["recommend", "{RUN}", "-n", "1024", "--causal", "--min-accuracy", "0.5"], "accuracy"),
    ("recommend-only-accuracy", ["recommend", "{ACC}", "-n", "1024"], "throughput"),
    # -- doctor -------------------------------------------------------------------------------------------
    ("doctor-device-unknown", ["doctor", "--device", "tpu"], r"unknown device 'tpu' \(--device\)"),
    ("doctor-device-empty", ["doctor", "--device", ""], "unknown device ''"),
    ("doctor-out-file", ["doctor", "--device", "cpu", "--out", "{FILE}"], "--out .*file.txt is a file"),
    ("doctor-out-empty", ["doctor", "--device", "cpu", "--out", ""], "--out is empty"),
    ("doctor-out-under-file", ["doctor", "--device", "cpu", "--out", "{FILE}/x"],
     "is a file, not a directory"),
    ("doctor-extra-argument", ["doctor", "extra"], r"Got unexpected extra argument\(s\) \(extra\)"),
    # -- the app ----------------------------------------------------------------------------------------
    ("command-unknown", ["frobnicate"], "No such command 'frobnicate'"),
    ("command-typo", ["reprot", "{RUN}"], "No such command 'reprot'"),
    ("option-unknown", ["--version"], "No such option: --version"),
    ("list-extra-argument", ["list", "extra"], r"Got unexpected extra argument\(s\) \(extra\)"),
    ("list-unknown-option", ["list", "--all"], "No such option: --all"),
]
if torch.cuda.is_available():
    BATTERY.append(("run-dtype-float64-cuda", [*RUN, "--device", "cuda", "--dtype", "float64"], "float64"))
else:
    BATTERY.append(("run-device-cuda-absent", [*RUN, "--device", "cuda"], "--device cuda but no CUDA device"))


def test_the_battery_holds_at_least_100_bad_inputs():
    assert len({name for name, _, _ in BATTERY}) == len(BATTERY) >= 100


@pytest.mark.parametrize("args, expected", [b[1:] for b in BATTERY], ids=[b[0] for b in BATTERY])
def test_bad_input_exits_2_with_one_line(args, expected, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative path written by mistake lands here, not in the repository
    stub = NoRun()
    if "/proc/" not in " ".join(args):  # that one fails in the runner, when it takes the directory
        monkeypatch.setattr(runner, "run", stub)
    no_doctor(monkeypatch)
    code, out, err = run_cli(monkeypatch, capsys, expand(args, inputs, tmp_path))
    assert TRACEBACK not in out + err
    assert (code, stub.calls) == (2, []), err
    assert ONE_LINE.fullmatch(err), err
    assert re.search(expected, err.strip()), err


# --- inputs that used to succeed while being wrong ---------------------------------------------------

def test_variants_lengths_and_dtypes_given_twice_run_once(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    stub = NoRun()
    monkeypatch.setattr(runner, "run", stub)
    code, out, _ = run_cli(monkeypatch, capsys, [*expand(RUN, {}, tmp_path), "-v", "vanilla", "-v", "vanilla",
                                                 "-n", "128", "-n", "128", "--dtype", "fp32", "--dtype",
                                                 "float32", "--no-progress"])
    cases = stub.calls[0][0]
    assert code == 0 and len(cases) == len({c.case_id for c in cases}) == 6  # 2 levels x 3 modes
    assert {(c.variant, c.seq_len, c.dtype) for c in cases} == {("vanilla", 128, "float32")}
    assert "ok 6" in out


def test_mode_and_level_keep_only_those_cases(monkeypatch, capsys, tmp_path):
    stub = NoRun()
    monkeypatch.setattr(runner, "run", stub)
    code, _, _ = run_cli(monkeypatch, capsys, [*expand(RUN, {}, tmp_path), "-v", "vanilla", "-n", "128",
                                               "--mode", "fwd", "--mode", "fwd_bwd", "--level", "kernel"])
    kept = {(c.mode, c.level, c.kind) for c in stub.calls[0][0]}
    assert code == 0 and kept == {("fwd", "kernel", "sweep"), ("fwd_bwd", "kernel", "sweep")}
    run_cli(monkeypatch, capsys, [*expand(RUN, {}, tmp_path), "--kind", "fidelity"])
    fidelity = stub.calls[1][0]
    assert fidelity and {c.kind for c in fidelity} == {"fidelity"}  # the grid's fidelity points alone


def test_the_default_timeout_and_a_given_one_reach_the_runner(monkeypatch, capsys, tmp_path):
    stub = NoRun()
    monkeypatch.setattr(runner, "run", stub)
    run_cli(monkeypatch, capsys, [*expand(RUN, {}, tmp_path), "-v", "vanilla", "-n", "128"])
    run_cli(monkeypatch, capsys, [*expand(RUN, {}, tmp_path), "-v", "vanilla", "-n", "128",
                                  "--timeout", "2.5"])
    from suites.throughput import suite

    assert [call[2]["timeout_s"] for call in stub.calls] == [suite.TIMEOUT_S, 2.5]
    assert {call[2]["retry"] for call in stub.calls} == {"failed"}
    assert {json.dumps(call[2]["run_fields"]) for call in stub.calls} == {'{"profile": "quick"}'}


@pytest.mark.slow
def test_a_run_named_twice_in_report_counts_once(inputs, tmp_path, monkeypatch, capsys):
    from harness.report import data, render

    named = [inputs["RUN"], inputs["RUN"], inputs["RUN"].parent / "run" / "."]
    assert len(data.Results.load(*named).rows) == len(forward_rows()) == 6
    report = render.build(named, tmp_path / "twice")
    assert "Rows: throughput: 6 ok" in report.markdown.read_text()
    code, out, _ = run_cli(monkeypatch, capsys, ["report", inputs["RUN"], inputs["RUN"], "--out",
                                                 tmp_path / "r"])
    assert code == 0 and out.strip().endswith("report.html")


@pytest.mark.slow
def test_a_pareto_length_is_checked_against_the_lengths_that_have_one(tmp_path, monkeypatch, capsys):
    names = ("vanilla", "flash-sdpa", "linear")
    run = fx.write_run(tmp_path / "both", forward_rows(names)
                       + [r for r in fx.accuracy_rows() if r["variant"] in names])
    code, _, err = run_cli(monkeypatch, capsys, ["report", run, "--pareto-n", "3000", "--out",
                                                 tmp_path / "r"])
    assert code == 2 and "lengths with both figures: 1024, 2048, 4096" in err
    code, _, _ = run_cli(monkeypatch, capsys, ["report", run, "--pareto-n", "2048", "--out", tmp_path / "r"])
    assert code == 0 and (tmp_path / "r" / "charts" / "pareto.svg").is_file()


@pytest.mark.slow
def test_a_corrupt_environment_is_named_and_the_report_still_renders(inputs, tmp_path, monkeypatch, capsys):
    run = fx.write_run(tmp_path / "run", forward_rows())
    (run / store.ENVIRONMENT).write_text('{"device": "cuda", ')
    code, out, err = run_cli(monkeypatch, capsys, ["report", run])
    assert code == 0 and out.strip().endswith("report.html")
    assert err.startswith("attnbench: warning: corrupt ") and str(run / store.ENVIRONMENT) in err


@pytest.mark.slow
def test_records_that_turn_read_only_during_a_run_end_in_one_line(tmp_path, monkeypatch, capsys):
    """As root a chmod does not stop a write: the store's write is made to fail as it would then."""
    use_fake_suite(monkeypatch)
    real = store.atomic_write

    def refuse_records(path, write):
        if Path(path).parent.name == store.RECORDS:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, write)

    monkeypatch.setattr(store, "atomic_write", refuse_records)
    code, _, err = run_cli(monkeypatch, capsys, ["run", "--suite", "fake", "--out", tmp_path,
                                                 "--no-progress"])
    assert code == 2 and ONE_LINE.fullmatch(err), err
    assert "cannot write" in err and "Permission denied" in err and "run the same command again" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory (the test above "
                    "fails the write instead)")
def test_a_read_only_run_directory_ends_in_one_line(tmp_path, monkeypatch, capsys):
    use_fake_suite(monkeypatch)
    (tmp_path / "run").mkdir()
    (tmp_path / "run").chmod(0o555)
    code, _, err = run_cli(monkeypatch, capsys, ["run", "--suite", "fake", "--out", tmp_path / "run"])
    assert code == 2 and ONE_LINE.fullmatch(err) and "not writable" in err


def test_a_second_run_on_the_same_out_exits_2_naming_the_holder(tmp_path, monkeypatch, capsys):
    from tests.test_runner import hold_lock

    use_fake_suite(monkeypatch)
    holder = hold_lock(tmp_path)
    try:
        code, _, err = run_cli(monkeypatch, capsys, ["run", "--suite", "fake", "--out", tmp_path])
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and ONE_LINE.fullmatch(err)
    assert f"is in use by process {holder.pid}" in err and "pass another --out" in err


def test_a_run_directory_of_another_device_exits_2(tmp_path, monkeypatch, capsys):
    use_fake_suite(monkeypatch)
    store.write_json(tmp_path / store.ENVIRONMENT, {"device": "cuda", "device_name": "NVIDIA H100"})
    code, _, err = run_cli(monkeypatch, capsys, ["run", "--suite", "fake", "--out", tmp_path])
    assert code == 2 and ONE_LINE.fullmatch(err) and "holds a run on NVIDIA H100 (cuda)" in err


@pytest.mark.slow
def test_rerunning_the_same_command_after_damage_completes_the_run_and_its_report(tmp_path, monkeypatch,
                                                                                 capsys):
    """The command line end to end: a worker dies, a record is corrupted; the same command again
    completes the run, and the report renders."""
    use_fake_suite(monkeypatch)
    monkeypatch.setenv("ATTNBENCH_FAKE_ACTION", "die_once")  # the first case to run kills its worker
    monkeypatch.setenv("ATTNBENCH_FAKE_MARKER", str(tmp_path / "died"))
    command = ["run", "--suite", "fake", "--out", tmp_path / "run", "-n", "8", "-n", "16", "-n", "32",
               "--no-progress"]
    code, out, _ = run_cli(monkeypatch, capsys, command)
    assert code == 0 and "rows written: error 1, ok 2" in out
    error = store.load(tmp_path / "run").query("status == 'error'").case_id.iloc[0]
    code, out, err = run_cli(monkeypatch, capsys, command)  # the failed case measured again
    assert code == 0 and "rows written: ok 1 (1 measured again, --retry failed); already done: 2" in out
    assert store.RunStore(tmp_path / "run").statuses()[error] == "ok"
    (tmp_path / "run" / "records" / "suite-fake.parquet").write_bytes(b"garbage")  # the compacted rows
    code, out, err = run_cli(monkeypatch, capsys, command)
    assert code == 0 and "rows written: ok 3; already done: 0" in out
    assert err.startswith("attnbench: warning: corrupt record") and len(err.splitlines()) == 1
    df = store.load(tmp_path / "run")
    assert sorted(df.seq_len) == [8, 16, 32] and (df.status == "ok").all()
    code, out, _ = run_cli(monkeypatch, capsys, ["report", tmp_path / "run"])
    assert code == 0 and Path(out.strip()).is_file()


def test_an_unexpected_error_is_one_line_and_a_log_with_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(errors, "_log_dir", [])
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(runner, "run", broken)
    code, out, err = run_cli(monkeypatch, capsys, [*expand(RUN, {}, tmp_path), "-v", "vanilla"])
    assert code == 1 and TRACEBACK not in out + err
    assert re.fullmatch(r"attnbench: internal error: KeyError: 'a bug' \(the traceback is in (\S+); please "
                        r"report it\)\n", err), err
    log = Path(re.search(r"traceback is in (\S+);", err).group(1))
    assert log == tmp_path / "out" / errors.CRASH_LOG  # the run directory's log
    assert TRACEBACK in log.read_text() and "in broken" in log.read_text()


def test_an_unexpected_error_before_a_run_directory_is_known_logs_to_a_temp_file(tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setattr(errors, "_log_dir", [])
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(cli.registry, "all_variants", lambda: 1 / 0)
    code, _, err = run_cli(monkeypatch, capsys, ["list"])
    assert code == 1 and "ZeroDivisionError" in err and str(tmp_path) in err
    assert len(err.splitlines()) == 1


# --- the property: any argument list -----------------------------------------------------------------

@functools.cache
def command_options() -> dict[str, list[str]]:
    """Each command of the app (whoever added it) -> its option names."""
    group = fx.command_of(cli.app)
    return {name: sorted(o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-"))
            for name, command in group.commands.items()}


VALUES = ["", " ", "0", "1", "-1", "128", "512", "1e400", "nan", "inf", "-inf", "1" + "0" * 30, "0.05", "2.5",
          "vanilla", "flash-sdpa", "mamba", "nope", "throughput", "accuracy", "long-range", "cpu", "cuda",
          "quick", "standard", "full", "fp32", "bf16", "float8", "failed", "none", "all", "train", "infer",
          "[bold]x[/]", "é", "--", "-", "{RUN}", "{ACC}", "{EMPTY}", "{NORUN}", "{FILE}", "{JSON:list}",
          "{JSON:no_stats}", "{JSON:deep}", "{TMP}/new", "{TMP}/new/deeper", "{FILE}/under", LONG]
# Random words never hold a slash: a path the test did not make would be written outside its directory.
WORD = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), max_size=12)
TOKEN = st.one_of(st.sampled_from(VALUES), WORD)


@st.composite
def argument_lists(draw) -> list[str]:
    options = command_options()
    name = draw(st.sampled_from(sorted(options)))
    word = st.one_of(st.sampled_from(options[name] or ["--help"]), TOKEN)
    return [name, *draw(st.lists(word, max_size=8))]


# 250 fixed examples in the test suite; ATTNBENCH_FUZZ_EXAMPLES=5000 runs a longer, random search.
FUZZ = os.environ.get("ATTNBENCH_FUZZ_EXAMPLES")


@pytest.mark.slow
@settings(max_examples=int(FUZZ or 250), deadline=None, derandomize=FUZZ is None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=argument_lists())
def test_any_argument_list_exits_0_or_2_without_a_traceback(args, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "run", NoRun())
    no_doctor(monkeypatch)
    no_frontier(monkeypatch)
    monkeypatch.setattr(charts, "save", lambda fig, out_dir, name: Path(out_dir) / f"{name}.svg")  # speed
    code, out, err = run_cli(monkeypatch, capsys, expand(args, inputs, tmp_path))
    assert code in (0, 2), (args, err)
    assert TRACEBACK not in out + err, args
    said = [line for line in err.splitlines() if not line.startswith("attnbench: warning: ")]
    if code == 2:  # one line (none where the help was printed instead)
        assert len(said) <= 1 and all(line.startswith("attnbench: error: ") for line in said), (args, err)


def test_the_frontier_stand_in_takes_what_the_cli_passes_and_checks_as_the_search_does(monkeypatch, capsys):
    no_frontier(monkeypatch)
    code, out, err = run_cli(monkeypatch, capsys, ["run", "--suite", "throughput", "--device", "cpu",
                                                   "--find-max-n", "-n", "1024", "-v", "vanilla"])
    assert code == 0, err
    code, _, err = run_cli(monkeypatch, capsys, ["run", "--suite", "throughput", "--device", "cpu",
                                                 "--find-max-n", "-v", "flash-cudnn"])
    assert code == 2 and err.startswith("attnbench: error: ") and TRACEBACK not in err


def test_property_inputs_reach_every_command():
    """The property test covers every command there is, `list` to whatever was added last."""
    options = command_options()
    assert {"list", "run", "import-benchmark", "report", "recommend", "doctor"} <= set(options)
    assert {"--suite", "--out", "--retry", "--fresh", "--timeout", "-n"} <= set(options["run"])
