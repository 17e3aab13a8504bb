"""`nox -s gpu-smoke`: the first minutes on a new GPU runner, as much evidence as they can hold.

    python -m harness.smoke --wheelhouse ~/wheelhouse      # on the runner (nox --no-venv -s gpu-smoke -- ...)
    python -m harness.smoke --device cpu                   # the same steps on the CPU (CI)

The steps run in order, each in its own process group under its own time budget (GPU_STEPS, sized for one
H100 or H200; CPU_STEPS). A step that runs past its budget is interrupted (SIGINT: a suite keeps every row
it finished), recorded `timed out`, and the next step runs; so is a step that fails, or a library that
does not import. On the CPU the steps that need a GPU are recorded `skipped: no CUDA device`.

1. install: the checkout and its GPU extras from an offline wheelhouse (scripts/wheelhouse.py), if given;
2. imports: each optional library imported, its version or its error kept (imports.json);
3. doctor: `attnbench doctor`, every variant's fast path against its reference (environment.json);
4. tests-smoke: the CUDA tests marked `smoke`, one per fast path (tests-smoke.xml);
5. tests-cuda: the other CUDA tests, as far as the budget goes (tests-cuda.xml; stopped there: `cut`);
6. sweep: bf16 throughput at the kernel level, forward and forward+backward, N = 1K, 4K, 16K, of every
   variant whose CUDA path does not compile per shape (the exact kernels and the recurrent families'
   library kernels, which autotune once per key), one length after the other as far as the budget goes
   (stopped there: `cut`; the cost model expects fla's autotuning to outrun it);
7. sweep-compiled: the same for the variants that declare a compilation per shape (FlexAttention's:
   harness.costs.CompileCost), one length after the other as far as the budget goes (`cut`);
8. fidelity: the grid's fidelity rows (our timer beside triton's do_bench);
9. energy: NVML's energy counter around a second of bf16 matmuls (nvml-energy.json);
10. report: `attnbench report`.

Everything lands in one run directory (default results/smoke-DEVICE-UTCTIME): the suites' records and
environment.json, each step's log under smoke-logs/, and smoke.json (each step's status, seconds, budget
and reason, rewritten as each step ends). Copy it back and `attnbench merge` it with other runs.
The plan's estimate is the sum of its budgets (the most it can take); --device cpu prints the GPU
plan's too. Beside it the throughput suite's cost model (harness.estimate, the one `attnbench run
--estimate` prints) estimates what the two sweeps would take to finish, compiling and autotuning included
(`model_estimates`): a sweep the model expects to outrun its budget is flagged. Exit code: 0 when no
step failed or timed out, 1 otherwise (their reasons are in smoke.json).
This module imports only the standard library at load: it runs before the install it performs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPU_LIMIT_S = 480.0  # the whole smoke on one H100 / H200, install included
CPU_LIMIT_S = 180.0  # the CPU twin in CI
GRACE_S = 15.0  # after SIGINT, how long a step may take to write what it has before it is killed
TEST_TIMEOUT_S = 60.0  # per CUDA test (pytest-timeout): a hung kernel costs one test, not the step
PYTHON = sys.executable
ATTNBENCH = (PYTHON, "-m", "harness")
# The optional libraries and the module each installs (harness.env.OPTIONAL_PACKAGES, and pydantic,
# which the runner image lacks).
IMPORTS = {"pydantic": "pydantic", "triton": "triton", "nvidia-ml-py": "pynvml", "fla-core": "fla",
           "xformers": "xformers.ops", "mamba-ssm": "mamba_ssm", "causal-conv1d": "causal_conv1d"}
SWEEP = {"cuda": dict(profile="quick", dtype="bfloat16", lengths=(1024, 4096, 16384)),
         "cpu": dict(profile="quick", dtype="float32", lengths=(128,))}
SWEEP_MODES, SWEEP_LEVEL, SWEEP_KIND = ("fwd", "fwd_bwd"), "kernel", "sweep"
SWEEP_STEPS = {"sweep": False, "sweep-compiled": True}  # step -> whether it sweeps the per-shape compilers
FIDELITY_PROFILE = {"cuda": "standard", "cpu": "quick"}
EXTRAS = "gpu,dev"
SOURCE_BUILT = "mamba-ssm"  # installed from its wheel in the wheelhouse, outside the extras

Commands = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Step:
    """One step: its commands run one after another under `budget_s` in all. `commands` may be a
    function of the run directory, called when the step starts (after the install)."""

    name: str
    budget_s: float
    commands: Commands | Callable[[Path], Commands]
    what: str
    cuda_only: bool = False
    open_ended: bool = False  # runs as far as its budget goes: stopped there, it is `cut`, not a failure

    def command_lines(self, out: Path) -> Commands:
        return self.commands(out) if callable(self.commands) else self.commands


@dataclass
class Outcome:
    name: str
    status: str  # ok, failed, timed out, cut (an open-ended step at its budget), skipped, not run
    seconds: float
    budget_s: float
    reason: str = ""
    detail: dict = field(default_factory=dict)
    cpu_seconds: float | None = None  # user + system time of the step's processes: what load does not inflate


# --- the plan ------------------------------------------------------------------------------------

def install_commands(wheelhouse: Path) -> Commands:
    """The runner's one install: the checkout in editable mode with its extras, and the source-built
    wheel, from the wheelhouse alone (scripts/wheelhouse.py prints the same line)."""
    pins = (wheelhouse / "requirements.txt").read_text(encoding="utf-8").split() \
        if (wheelhouse / "requirements.txt").is_file() else []
    built = [p for p in pins if p.lower().replace("_", "-").startswith(SOURCE_BUILT + "==")] or [SOURCE_BUILT]
    return ((PYTHON, "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse),
             "-e", f".[{EXTRAS}]", *built),)


def pytest_command(marker: str, xml: str) -> Callable[[Path], Commands]:
    return lambda out: ((PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", marker,
                         f"--timeout={TEST_TIMEOUT_S:g}", "--continue-on-collection-errors",
                         f"--junitxml={out / xml}"),)


def compiles_per_shape(variant) -> bool:
    """Whether its CUDA path compiles again for every shape, as it declares (FlexAttention's does)."""
    cost = variant.compile_cost("cuda")
    return cost is not None and cost.per_shape


def split_variants(variants) -> tuple[list[str], list[str]]:
    """(names whose CUDA path does not compile per shape, names whose CUDA path does), exact variants
    first in each: a sweep cut short by its budget loses the others."""
    ordered = sorted(variants, key=lambda v: (not v.exact, v.name))
    compiled = [v.name for v in ordered if compiles_per_shape(v)]
    return [v.name for v in ordered if v.name not in compiled], compiled


def probe(function: str) -> Callable[[Path], Commands]:
    """A probe of this module run in its own process: function(run directory)."""
    return lambda out: ((PYTHON, "-c", f"from harness.smoke import {function}; {function}({str(out)!r})"),)


def sweep_commands(device: str, compiled: bool) -> Callable[[Path], Commands]:
    """The sweep of the uncompiled paths, or of the compiled ones: one run per length, shortest first, so
    that a budget that ends early still leaves every variant measured at some length (the first length
    pays the autotuning and the compiles: the cost model says when they outrun the budget)."""
    def commands(out: Path) -> Commands:
        importlib.invalidate_caches()  # packages the install step added since this process started
        from harness import registry  # after the install: the variants' plugins load now

        names = split_variants(registry.all_variants())[compiled]
        if not names:  # without -v the run would sweep every variant
            return ()
        grid = SWEEP[device]
        base = (*ATTNBENCH, "run", "--suite", "throughput", "--device", device, "--profile", grid["profile"],
                "--dtype", grid["dtype"], *(a for m in SWEEP_MODES for a in ("--mode", m)),
                "--level", SWEEP_LEVEL, "--kind", SWEEP_KIND, *(a for n in names for a in ("-v", n)),
                "--out", str(out), "--no-progress")
        return tuple((*base, "-n", str(n)) for n in grid["lengths"])
    return commands


def sweep_cases(device: str, compiled: bool) -> list:
    """The cases a sweep step's commands run, planned as `attnbench run` plans them (the throughput
    suite's plan, less the other modes, levels and kinds)."""
    from harness import plugins, registry

    names = split_variants(registry.all_variants())[compiled]
    if not names:
        return []
    grid = SWEEP[device]
    cases = plugins.suite("throughput").plan(profile=grid["profile"], device=device, variants=names,
                                             seq_lens=list(grid["lengths"]), dtypes=[grid["dtype"]])
    return [c for c in cases if c.mode in SWEEP_MODES and c.level == SWEEP_LEVEL and c.kind == SWEEP_KIND]


def model_estimates(device: str) -> dict:
    """Each sweep step's cases and what the throughput suite's cost model (harness.estimate) expects them
    to take on `device`, compiling and autotuning included: step -> (cases, Estimate)."""
    from harness import estimate, plugins

    model = estimate.of_suite(plugins.suite("throughput"))
    return {step: (len(cases), model(cases)) for step, compiled in SWEEP_STEPS.items()
            for cases in [sweep_cases(device, compiled)]}


def model_lines(plan: Sequence[Step], device: str) -> list[str]:
    """The cost model's view of the sweeps beside their budgets; one line saying why where the model
    cannot load yet (a runner before its install: no pydantic)."""
    try:
        found = model_estimates(device)
    except (ImportError, ValueError) as e:
        return [f"cost model of the sweeps on {device}: not available before the install ({one_line(e)})"]
    budgets = {s.name: s for s in plan}
    lines = []
    for name, (n, est) in found.items():
        step = budgets[name]
        over = est.seconds > step.budget_s
        verdict = ("; more than its budget: it will be cut there" if step.open_ended else
                   "; more than its budget: it will time out") if over else ""
        lines.append(f"cost model, {name} on {device}: {n} cases, {est.seconds:.0f} s of which compiling and "
                     f"autotuning {est.compile_s:.0f} s (budget {step.budget_s:g} s){verdict}")
    return lines


def steps(device: str, wheelhouse: Path | None = None) -> list[Step]:
    """The smoke's steps on `device`, in order, with their budgets (GPU: one H100 or H200)."""
    gpu = device == "cuda"
    plan = []
    if wheelhouse is not None:
        plan.append(Step("install", 60, install_commands(wheelhouse), "the checkout and extras, offline"))
    plan += [
        Step("imports", 20 if gpu else 10, probe("import_probe"), "each optional library imported"),
        Step("doctor", 110 if gpu else 25,
             lambda out: ((*ATTNBENCH, "doctor", "--device", device, "--out", str(out)),),
             "every variant's fast path against its reference"),
        Step("tests-smoke", 100, pytest_command("cuda and smoke", "tests-smoke.xml"),
             "CUDA tests marked smoke: one per fast path", cuda_only=True),
        Step("tests-cuda", 25, pytest_command("cuda and not smoke", "tests-cuda.xml"),
             "the other CUDA tests, as far as the budget goes", cuda_only=True, open_ended=True),
        Step("sweep", 80 if gpu else 70, sweep_commands(device, compiled=False),
             "throughput: kernel level, fwd and fwd+bwd, uncompiled paths, as far as the budget goes",
             open_ended=True),
        Step("sweep-compiled", 40 if gpu else 30, sweep_commands(device, compiled=True),
             "throughput: the FlexAttention variants (a compilation per shape), as far as the budget goes",
             open_ended=True),
        Step("fidelity", 20,
             lambda out: ((*ATTNBENCH, "run", "--suite", "throughput", "--device", device, "--profile",
                           FIDELITY_PROFILE[device], "--kind", "fidelity", "--out", str(out),
                           "--no-progress"),),
             "the grid's fidelity rows: our timer beside do_bench"),
        Step("energy", 10, probe("energy_probe"), "NVML's energy counter around a second of matmuls",
             cuda_only=True),
        Step("report", 15 if gpu else 25, lambda out: ((*ATTNBENCH, "report", str(out)),),
             "attnbench report"),
    ]
    return plan


def estimate_s(plan: Sequence[Step], device: str) -> float:
    """The most a plan can take on `device`: the sum of the budgets of the steps that run there."""
    return sum(s.budget_s for s in plan if device == "cuda" or not s.cuda_only)


# --- running it ----------------------------------------------------------------------------------

def run_step(step: Step, out: Path, device: str, log_dir: Path) -> Outcome:
    """One step under its budget; whatever happens becomes its Outcome."""
    if step.cuda_only and device != "cuda":
        return Outcome(step.name, "skipped", 0.0, step.budget_s, "no CUDA device")
    started = time.monotonic()
    try:
        commands = step.command_lines(out)
    except Exception as e:  # e.g. the variants cannot be listed: the step records it, the smoke goes on
        return Outcome(step.name, "failed", time.monotonic() - started, step.budget_s, one_line(e))
    log = log_dir / f"{step.name}.log"
    with log.open("w", encoding="utf-8") as sink:
        for command in commands:
            left = step.budget_s - (time.monotonic() - started)
            sink.write("$ " + " ".join(command) + "\n")
            sink.flush()
            code = _run_bounded(command, sink, left)
            if code is None:
                return Outcome(step.name, "cut" if step.open_ended else "timed out",
                               time.monotonic() - started, step.budget_s,
                               f"past its budget of {step.budget_s:g} s; {last_line(log)}".strip("; "))
            if code != 0:
                return Outcome(step.name, "failed", time.monotonic() - started, step.budget_s,
                               f"exit {code}: {last_line(log)}")
    return Outcome(step.name, "ok", time.monotonic() - started, step.budget_s, last_line(log))


def _run_bounded(command: Sequence[str], sink, seconds: float) -> int | None:
    """Run `command` in its own process group; past `seconds`, SIGINT, then SIGKILL after GRACE_S.
    Returns the exit code, or None when it ran out of time."""
    if seconds <= 0:
        return None
    process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_interruptible)
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGINT)
        try:
            process.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
        return None
    finally:
        if process.poll() is None:  # interrupted here (Ctrl-C): the step's processes go too
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _interruptible() -> None:
    """In the step's process before it starts: SIGINT back to its default. A shell that starts a job in the
    background (`nohup nox -s gpu-smoke &`, a CI runner's script) leaves SIGINT ignored, and an ignored
    signal stays ignored across exec, so the step would not see the interrupt and would lose its rows to
    SIGKILL after the grace."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


TABLE_RULES = set("─│┌┐└┘├┤┬┴┼━┃┏┓┗┛┡┩╇┣┫┳┻╋ ")


def last_line(log: Path) -> str:
    """What a step's log ends with: a suite's last `rows written:` line, else the last line that is not
    a table's rule (the error it died of, or its summary)."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    rows = [line for line in lines if line.startswith("rows written:")]
    text = [line for line in lines if line and not set(line) <= TABLE_RULES]
    return (rows or text or [""])[-1][:300]


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / errors / skipped of a pytest JUnit XML file (empty when there is none)."""
    if not path.is_file():
        return {}
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return {}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
            "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}


def run(plan: Sequence[Step], out: Path, device: str, echo: Callable[[str], None] = print) -> list[Outcome]:
    """Every step of the plan in order; smoke.json is rewritten as each one ends."""
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / "smoke-logs"
    log_dir.mkdir(exist_ok=True)
    outcomes: list[Outcome] = []
    for i, step in enumerate(plan):
        echo(f"[{i + 1}/{len(plan)}] {step.name} (budget {step.budget_s:g} s): {step.what}")
        before = _children_cpu_s()
        outcome = run_step(step, out, device, log_dir)
        outcome.cpu_seconds = round(_children_cpu_s() - before, 2)
        xml = out / f"{step.name}.xml"
        if xml.is_file():
            outcome.detail["tests"] = junit_counts(xml)
        outcomes.append(outcome)
        write_record(out, device, plan, outcomes)
        because = f": {outcome.reason}" if outcome.reason else ""
        echo(f"    {outcome.status} in {outcome.seconds:.1f} s{because}")
    return outcomes


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_record(out: Path, device: str, plan: Sequence[Step], outcomes: list[Outcome]) -> None:
    done = {o.name for o in outcomes}
    pending = [Outcome(s.name, "not run", 0.0, s.budget_s) for s in plan if s.name not in done]
    record = {"device": device, "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "estimate_s": estimate_s(plan, device), "gpu_estimate_s": gpu_estimate_s(),
              "steps": [asdict(o) for o in [*outcomes, *pending]]}
    tmp = out / "smoke.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "smoke.json")


def gpu_estimate_s() -> float:
    """The GPU plan's estimate, install included (a runner installs from a wheelhouse)."""
    return estimate_s(steps("cuda", Path("wheelhouse")), "cuda")


# --- the probes (run as their own steps, after the install) -----------------------------------------

def import_probe(out: str) -> None:
    """Import each optional library; its version or the error it raised, in OUT/imports.json."""
    import importlib.metadata

    found = {}
    for dist, module in IMPORTS.items():
        try:
            importlib.import_module(module)
            found[dist] = {"ok": True, "version": importlib.metadata.version(dist)}
        except Exception as e:  # a library that fails to import is the finding
            found[dist] = {"ok": False, "error": one_line(e)}
        print(f"{dist:15} {found[dist].get('version') or found[dist]['error']}")
    Path(out, "imports.json").write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    print(f"{sum(f['ok'] for f in found.values())} of {len(found)} libraries import")


def energy_probe(out: str, seconds: float = 1.0) -> None:
    """NVML's energy counter and a few samples around `seconds` of bf16 matmuls on the first GPU, in
    OUT/nvml-energy.json; exits 1 when NVML cannot be read (the reason is kept)."""
    import torch

    from harness import telemetry

    gpu = telemetry.GpuTelemetry.open("cuda")
    if gpu is None:
        reason = "no CUDA device" if not torch.cuda.is_available() else "NVML could not be opened"
        Path(out, "nvml-energy.json").write_text(json.dumps({"ok": False, "reason": reason}) + "\n")
        raise SystemExit(f"energy: {reason}")
    try:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        before, started = gpu.energy_mj(), time.perf_counter()
        with telemetry.sampler(gpu) as sampler:
            calls = 0
            while time.perf_counter() - started < seconds:
                a @ a
                calls += 1
                if calls % 10 == 0:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
        elapsed, after = time.perf_counter() - started, gpu.energy_mj()
        joules = None if before is None or after is None else (after - before) / 1000
        result = {"ok": joules is not None, "seconds": elapsed, "joules": joules,
                  "power_w_mean": None if joules is None else joules / elapsed,
                  "tflops": 2 * 8192**3 * calls / elapsed / 1e12, "device": torch.cuda.get_device_name(),
                  **telemetry.summarize(sampler.samples, gpu.reasons)}
    finally:
        gpu.close()
    Path(out, "nvml-energy.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"energy: {result['joules']} J in {elapsed:.2f} s ({result['power_w_mean']} W mean), "
          f"{result['tflops']:.0f} TFLOP/s bf16")
    if not result["ok"]:
        raise SystemExit(f"energy: the counter gave no reading ({result['telemetry_reason']})")


# --- the command line ----------------------------------------------------------------------------

def describe(plan: Sequence[Step], device: str) -> str:
    lines = [f"{'step':16} {'budget':>7}  what"]
    for s in plan:
        skipped = " (skipped: no CUDA device)" if s.cuda_only and device != "cuda" else ""
        lines.append(f"{s.name:16} {s.budget_s:6g}s  {s.what}{skipped}")
    return "\n".join(lines)


def default_out(device: str) -> Path:
    return ROOT / "results" / f"smoke-{device}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--wheelhouse", type=Path, help="install from this offline wheelhouse first")
    parser.add_argument("--out", type=Path, help="the run directory (default results/smoke-DEVICE-UTCTIME)")
    args = parser.parse_args(argv)
    if args.wheelhouse is not None and not args.wheelhouse.is_dir():
        parser.error(f"--wheelhouse {args.wheelhouse} is not a directory")
    out = (args.out or default_out(args.device)).resolve()
    if out.is_file():
        parser.error(f"--out {out} is a file")
    plan = steps(args.device, args.wheelhouse.resolve() if args.wheelhouse else None)
    print(describe(plan, args.device))
    print(f"estimate: at most {estimate_s(plan, args.device):.0f} s on {args.device}; the GPU plan (install "
          f"included): at most {gpu_estimate_s():.0f} s = {gpu_estimate_s() / 60:.1f} min on one H100/H200 "
          f"(limit {GPU_LIMIT_S / 60:.0f} min)")
    for line in model_lines(steps("cuda"), "cuda"):  # the GPU's sweeps, whatever the device
        print(line)
    started = time.monotonic()
    outcomes = run(plan, out, args.device)
    count = {s: sum(o.status == s for o in outcomes) for s in ("ok", "cut", "skipped")}
    bad = len(outcomes) - sum(count.values())
    print(f"smoke on {args.device} in {time.monotonic() - started:.0f} s: {out / 'smoke.json'}")
    print(f"smoke: {count['ok'] + count['cut']} passed, {bad} failed, {count['skipped']} skipped")  # steps
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
