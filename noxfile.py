"""Sessions: `nox -s tests` (CPU test suite), `nox -s lint`, `nox -s bench` (every suite, then the report).

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


def install(session: nox.Session, extras: str = "dev") -> None:
    if session.venv_backend == "none":
        return
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (CUDA-marked tests run only where a GPU is visible)."""
    install(session)
    session.run("pytest", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    if session.venv_backend != "none":
        session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Every suite on the default device (cuda when present), then the report.

    `nox -s bench -- --profile standard --out results/my-run` passes options to every suite.
    """
    install(session)
    args = list(session.posargs)
    if "--out" not in args:
        args += ["--out", f"results/bench-{session.run('python', '-c', PROBE, silent=True).strip()}"]
    out = args[args.index("--out") + 1]
    device = args[args.index("--device"):][:2] if "--device" in args else []
    # The doctor first: a broken library shows in one table, kept in the run's environment.json, and
    # the suites run on (exit code 1 marks a failed variant, which the suites then record row by row).
    session.run("attnbench", "doctor", "--out", out, *device, success_codes=[0, 1])
    for suite in ("throughput", "accuracy", "long-range"):
        session.run("attnbench", "run", "--suite", suite, *args)
    session.run("attnbench", "report", out)


# Names a run directory after the device and the time: results/bench-<device>-<yyyymmdd-hhmm>.
PROBE = (
    "import torch, time; print(('cuda' if torch.cuda.is_available() else 'cpu') + "
    "time.strftime('-%Y%m%d-%H%M'))"
)
