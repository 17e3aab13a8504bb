"""`nox -s bench`: one stable run directory per device and profile, so the same command resumes it."""

import noxfile  # the repository root is on the path (pyproject's pythonpath)


def test_the_default_run_directory_is_named_by_device_and_profile():
    commands = noxfile.bench_commands(["--profile", "standard"], "cuda")
    out = "results/bench-cuda-standard"
    assert commands == [
        ["attnbench", "doctor", "--out", out, "--device", "cuda"],
        ["attnbench", "run", "--suite", "throughput", "--profile", "standard", "--out", out],
        ["attnbench", "run", "--suite", "accuracy", "--profile", "standard", "--out", out],
        ["attnbench", "run", "--suite", "long-range", "--profile", "standard", "--out", out],
        ["attnbench", "report", out],
    ]
    assert noxfile.bench_commands([], "cpu")[-1] == ["attnbench", "report", "results/bench-cpu-quick"]
    assert noxfile.bench_commands(["--profile=full"], "cpu")[-1][-1] == "results/bench-cpu-full"


def test_the_same_command_twice_gives_the_same_directory_and_fresh_goes_to_the_first_suite_only():
    assert noxfile.bench_commands([], "cpu") == noxfile.bench_commands([], "cpu")
    commands = noxfile.bench_commands(["--fresh", "--out", "results/mine"], "cpu")
    assert [c.count("--fresh") for c in commands] == [1, 0, 0, 0, 0]
    # The doctor right after the suite that clears the directory: its findings are kept.
    assert [c[1] for c in commands] == ["run", "doctor", "run", "run", "report"]
    assert commands[-1] == ["attnbench", "report", "results/mine"]
    assert all(c[c.index("--out") + 1] == "results/mine" for c in commands[:4])
