"""`nox -s bench`: one stable run directory per device and profile, so the same command resumes it; a
doctor failure lets the suites run, and a correctness failure in the report fails the session."""

import pytest
from nox.command import CommandFailed

import noxfile  # the repository root is on the path (pyproject's pythonpath)


def test_the_default_run_directory_is_named_by_device_and_profile():
    commands = noxfile.bench_commands(["--profile", "standard"], "cuda")
    out = "results/bench-cuda-standard"
    assert commands == [
        ["attnbench", "doctor", "--out", out, "--device", "cuda"],
        ["attnbench", "run", "--suite", "throughput", "--profile", "standard", "--out", out],
        ["attnbench", "run", "--suite", "accuracy", "--profile", "standard", "--out", out],
        ["attnbench", "run", "--suite", "long-range", "--profile", "standard", "--out", out],
        ["attnbench", "report", out, "--fail-on-incorrect"],
    ]
    assert noxfile.bench_commands([], "cuda")[-1] == ["attnbench", "report", "results/bench-cuda-quick",
                                                      "--fail-on-incorrect"]
    assert noxfile.bench_commands(["--profile=full"], "cpu")[-1][-2] == "results/bench-cpu-full"


def test_with_no_profile_a_cpu_runs_the_standard_sweep_and_the_exactness_checks_but_no_training():
    out = "results/bench-cpu-default"
    assert noxfile.bench_commands([], "cpu") == [
        ["attnbench", "doctor", "--out", out, "--device", "cpu"],
        ["attnbench", "run", "--suite", "throughput", "--profile", "standard", "--dtype", "float32", "--out",
         out],
        ["attnbench", "run", "--suite", "accuracy", "--profile", "standard", "--seeds", "0", "--out", out],
        ["attnbench", "report", out, "--fail-on-incorrect"],
    ]
    from suites import accuracy
    from suites.throughput import planning
    cases = accuracy.plan("standard", "cpu", seeds=0)
    assert cases and {c.task for c in cases} == {"exactness"}  # --seeds 0: nothing trains
    assert {c.dtype for c in cases} == {"float64", "float32", "float16", "bfloat16"}  # every dtype's checks
    # --dtype float32: the standard sweep's float32 cases, exactly (no other sweep moved into float32).
    standard = planning.plan("standard", "cpu")
    assert {c.case_id for c in planning.plan("standard", "cpu", dtypes=["float32"])} == {
        c.case_id for c in standard if c.dtype == "float32"}
    assert max(c.seq_len for c in standard if c.dtype == "float32") == 131072


def test_the_same_command_twice_gives_the_same_directory_and_fresh_goes_to_the_first_suite_only():
    assert noxfile.bench_commands([], "cpu") == noxfile.bench_commands([], "cpu")
    commands = noxfile.bench_commands(["--fresh", "--out", "results/mine"], "cpu")
    assert [c.count("--fresh") for c in commands] == [1, 0, 0, 0]
    # The doctor right after the suite that clears the directory: its findings are kept.
    assert [c[1] for c in commands] == ["run", "doctor", "run", "report"]
    assert commands[-1] == ["attnbench", "report", "results/mine", "--fail-on-incorrect"]
    assert all(c[c.index("--out") + 1] == "results/mine" for c in commands[:3])


class FakeSession:
    """Records what the session runs; the commands named in `exit_1` exit with code 1."""

    venv_backend = "none"  # no installs

    def __init__(self, exit_1: tuple[str, ...] = ()):
        self.posargs = ["--device", "cpu", "--profile", "quick", "--out", "results/x"]
        self.exit_1, self.ran = exit_1, []

    def run(self, *args, success_codes=(0,), silent=False):
        self.ran.append(args[1])
        code = 1 if args[1] in self.exit_1 else 0
        if code not in success_codes:
            raise CommandFailed(f"{args[1]} exited {code}")


def test_a_doctor_failure_lets_the_suites_run_and_the_report_fail_the_session():
    session = FakeSession(exit_1=("doctor",))
    noxfile.bench(session)  # the doctor's exit 1 is no reason to stop: the suites record row by row
    assert session.ran == ["doctor", "run", "run", "run", "report"]
    session = FakeSession(exit_1=("doctor", "report"))  # the report's --fail-on-incorrect found a failure
    with pytest.raises(CommandFailed, match="report exited 1"):
        noxfile.bench(session)
    assert session.ran[-1] == "report"


@pytest.mark.slow  # an interpreter of its own
def test_the_cpu_default_names_what_it_leaves_out_with_the_commands_that_add_it():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", noxfile.LEFT_OUT, "results/x"], capture_output=True,
                          text=True, check=True)
    bf16, learned = done.stdout.strip().splitlines()
    from suites.throughput import planning
    count = sum(c.dtype == "bfloat16" for c in planning.plan("standard", "cpu"))
    assert count and f"bfloat16 series ({count} cases)" in bf16
    assert bf16.endswith("attnbench run --suite throughput --profile standard --out results/x")
    assert "core-hours" in learned and "--suite accuracy --profile standard --out results/x" in learned
    hours = float(learned.split("about ")[1].split(" ")[0])
    assert 1 < hours < 20  # the CPU standard learned grid: hours, not minutes
