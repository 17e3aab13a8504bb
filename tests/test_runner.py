"""The runner and the results store: failures become rows, writes are atomic, runs resume, failed cases
are measured again, a killed worker or a corrupted file costs at most a re-run of the same command."""

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from harness import runner, store
from harness.context import RunContext
from harness.errors import RunDirError
from harness.report import render
from tests import fake_suite
from tests.fake_suite import Case

SUITE = "tests.fake_suite"
# The columns every row has (store.REQUIRED), for rows written straight to the store.
ROW = {"suite": "fake", "variant": "vanilla", "device": "cpu", "dtype": "float32", "status": "ok",
       "reason": "", "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00"}
RECORD_NAME = re.compile(r"[0-9a-f]{16}\.parquet|suite-[a-z-]+\.parquet")


def rows(path):
    return store.load(path).set_index("seq_len").sort_index()


def only_records(run) -> list[str]:
    """Names in records/ that are not a file of rows (temp files, strays); .corrupt/ aside."""
    return [p.name for p in (run / "records").iterdir() if p.name != store.CORRUPT
            and not RECORD_NAME.fullmatch(p.name)]


@pytest.mark.slow
def test_failures_are_rows_with_status_and_reason(tmp_path):
    cases = [Case(action="ok", seq_len=8), Case(action="nan", seq_len=8), Case(action="error", seq_len=8),
             Case(action="hang", seq_len=8), Case(action="crash", seq_len=8)]
    summary = runner.run(cases, SUITE, tmp_path, timeout_s=3, progress=False)
    df = store.load(tmp_path).set_index("action")
    assert summary.counts == {"ok": 1, "nonfinite": 1, "error": 2, "timeout": 1}
    assert df.loc["ok", "value"] == 16.0 and list(df.loc["ok", "curve"]) == [1.0, 0.5]
    assert df.loc["nan", "status"] == "nonfinite"
    assert df.loc["error", "reason"].startswith("RuntimeError: boom (at fake_suite.py:")
    assert "\n" not in df.loc["error", "reason"]
    assert df.loc["hang", "status"] == "timeout" and "timeout" in df.loc["hang", "reason"]
    assert df.loc["crash", "status"] == "error"
    assert df.loc["crash", "reason"] == "worker process died (exit code -9)"


@pytest.mark.slow
def test_each_run_s_cases_find_its_directory_through_their_context(tmp_path):
    """The fake suite caches a figure in its context's run directory: each run in its own."""
    for name in ("a", "b"):
        runner.run([Case(action="ok", seq_len=8)], SUITE, tmp_path / name, progress=False)
        assert store.read_json(tmp_path / name / fake_suite.CACHE_FILE) == {"figure": 1.0}
    assert "ATTNBENCH_RUN_DIR" not in os.environ  # no run directory is named to the process


@pytest.mark.slow
@pytest.mark.parametrize("action", ["oom", "cpu_oom"])
def test_oom_skips_larger_sizes_of_the_same_group(tmp_path, action):
    """CUDA's OutOfMemoryError and the CPU's "can't allocate memory" are both oom."""
    cases = [Case(action=action, seq_len=n) for n in (8, 16, 32, 64, 128)] + [Case(action="ok", seq_len=128)]
    runner.run(cases, SUITE, tmp_path, progress=False)
    df = store.load(tmp_path)
    oom = df[df.action == action].set_index("seq_len")["status"].to_dict()
    assert oom == {8: "ok", 16: "ok", 32: "oom", 64: "skipped", 128: "skipped"}
    assert df[df.action == "ok"].status.tolist() == ["ok"]  # another group is not affected


@pytest.mark.slow
def test_an_oom_recorded_earlier_still_skips_larger_sizes_on_resume(tmp_path):
    runner.run([Case(action="oom", seq_len=32)], SUITE, tmp_path, progress=False)
    summary = runner.run([Case(action="oom", seq_len=n) for n in (32, 64)], SUITE, tmp_path, progress=False)
    assert summary.counts == {"skipped": 1} and summary.skipped_as_done == 1


@pytest.mark.parametrize("exc, oom", [
    (MemoryError(), True),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("boom"), False),
    (OSError(errno.ENOENT, "No such file or directory"), False),
])
def test_is_oom_knows_cpu_and_cuda_memory_errors(exc, oom):
    assert runner.is_oom(exc) is oom


@pytest.mark.slow
def test_unsupported_is_recorded_not_run(tmp_path):
    # flash-cudnn runs on CUDA only: unsupported on the CPU of every machine, with or without a GPU.
    runner.run([Case(variant="flash-cudnn", device="cpu", seq_len=8)], SUITE, tmp_path, progress=False)
    row = store.load(tmp_path).iloc[0]
    assert row.status == "unsupported" and row.reason == "runs on cuda only"
    assert "value" not in row.index  # never measured
    assert (row.family, row.exact) == ("flash", True)  # registry facts on failed rows too


@pytest.mark.slow
def test_schema_round_trip(tmp_path):
    case = Case(action="ok", seq_len=8, params={"window": 4})
    runner.run([case], SUITE, tmp_path, progress=False, run_fields={"profile": "quick"})
    row = store.load(tmp_path).iloc[0]
    assert row.schema_version == store.SCHEMA_VERSION
    assert row.case_id == case.case_id and row.profile == "quick"
    rebuilt = Case(**{k: (json.loads(row[k]) if k == "params" else row[k]) for k in Case.model_fields})
    assert rebuilt == case and rebuilt.case_id == case.case_id
    for column in ("device_name", "torch", "commit", "started_at", "finished_at", "status", "reason",
                   "family", "exact", "backend"):
        assert column in row.index
    env = store.RunStore(tmp_path).environment()
    assert env["schema_version"] == store.SCHEMA_VERSION and env["device"] == "cpu"


@pytest.mark.slow
def test_load_reads_several_runs_in_one_call_each_once(tmp_path):
    runner.run([Case(seq_len=8)], SUITE, tmp_path / "a", progress=False)
    runner.run([Case(seq_len=16)], SUITE, tmp_path / "b", progress=False)
    both = store.load(tmp_path / "a", tmp_path / "b")
    assert sorted(both.seq_len) == [8, 16] and both.run_dir.nunique() == 2
    assert len(store.load(tmp_path)) == 2  # a folder of runs
    # Named twice, or once directly and once through its folder: still one copy of each row.
    named = store.load(tmp_path / "a", tmp_path / "a", tmp_path, tmp_path / "b" / ".")
    assert sorted(named.seq_len) == [8, 16]


@pytest.mark.slow
def test_duplicate_cases_run_and_count_once(tmp_path):
    cases = [Case(seq_len=8), Case(seq_len=16), Case(seq_len=8)]
    summary = runner.run(cases, SUITE, tmp_path, progress=False)
    assert summary.counts == {"ok": 2} and len(store.load(tmp_path)) == 2


@pytest.mark.slow
def test_resume_skips_finished_cases(tmp_path):
    cases = [Case(seq_len=n) for n in (8, 16)]
    runner.run(cases[:1], SUITE, tmp_path, progress=False)
    first = store.RunStore(tmp_path).rows([cases[0].case_id])
    summary = runner.run(cases, SUITE, tmp_path, progress=False)
    assert summary.skipped_as_done == 1 and summary.counts == {"ok": 1} and summary.retried == 0
    assert len(store.load(tmp_path)) == 2
    assert store.RunStore(tmp_path).rows([cases[0].case_id]) == first  # not measured again


def write_status_rows(run, cases_by_status):
    rs = store.RunStore(run)
    with rs.lock():
        rs.open(runner.env.describe("cpu"))
        for status, case in cases_by_status.items():
            rs.write({**ROW, "case_id": case.case_id, **case.flat(), "status": status, "reason": "earlier"})


@pytest.mark.slow
@pytest.mark.parametrize("retry, measured_again", [
    ("failed", {"error", "timeout"}),
    ("none", set()),
    ("all", set(store.STATUSES)),
])
def test_retry_decides_which_recorded_statuses_are_measured_again(tmp_path, retry, measured_again):
    # The oom row in a group of its own: the OOM it records (when it stands) skips larger sizes of its group.
    cases = {status: Case(action="slow" if status == "oom" else "ok", seq_len=i + 1)
             for i, status in enumerate(store.STATUSES)}
    write_status_rows(tmp_path, cases)
    summary = runner.run([*cases.values(), Case(seq_len=99)], SUITE, tmp_path, progress=False, retry=retry)
    after = store.load(tmp_path).set_index("case_id")
    again = {status for status, case in cases.items() if after.loc[case.case_id, "reason"] != "earlier"}
    assert again == measured_again
    assert summary.retried == len(measured_again) and summary.counts == {"ok": len(measured_again) + 1}
    assert summary.skipped_as_done == len(store.STATUSES) - len(measured_again)


def test_unknown_retry_policy_is_refused():
    with pytest.raises(ValueError, match="unknown retry policy"):
        runner.cases_to_run([], {}, "sometimes")


@pytest.mark.slow
def test_a_worker_that_dies_is_one_error_row_and_the_rerun_measures_it_again(tmp_path):
    marker = tmp_path / "died"
    cases = [Case(seq_len=8), Case(action="die_once", seq_len=16, params={"marker": str(marker)}),
             Case(seq_len=32)]
    first = runner.run(cases, SUITE, tmp_path / "run", progress=False)
    assert first.counts == {"ok": 2, "error": 1}  # the cases after the dead worker ran in a new one
    died = rows(tmp_path / "run").loc[16]
    assert died.status == "error" and died.reason == "worker process died (exit code -9)"
    second = runner.run(cases, SUITE, tmp_path / "run", progress=False)
    assert second.retried == 1 and second.counts == {"ok": 1} and second.skipped_as_done == 2
    assert (rows(tmp_path / "run").status == "ok").all()


RUN_SCRIPT = textwrap.dedent("""
    import sys
    from harness import runner
    from tests.fake_suite import Case
    cases = [Case(action="slow", seq_len=n) for n in range(1, int(sys.argv[2]) + 1)]
    runner.run(cases, "tests.fake_suite", sys.argv[1], timeout_s=20, progress=False)
""")


def start_run(out, n_cases=20) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(out), str(n_cases)],
                            start_new_session=True, stderr=subprocess.PIPE, text=True)


def wait_for_records(out, n, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (out / "records").is_dir() and len(list((out / "records").glob("*.parquet"))) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} records did not appear: {proc.poll()=}")


def worker_pid(pid) -> int:
    """The runner's worker: the child process started by multiprocessing's spawn."""
    children = [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    workers = [c for c in children if b"spawn_main" in open(f"/proc/{c}/cmdline", "rb").read()]
    assert len(workers) == 1, children
    return workers[0]


@pytest.mark.slow
def test_killing_the_worker_from_outside_costs_one_case_and_the_rerun_completes(tmp_path):
    proc = start_run(tmp_path, n_cases=8)
    wait_for_records(tmp_path, 3, proc)
    os.kill(worker_pid(proc.pid), signal.SIGKILL)
    assert proc.wait(timeout=60) == 0
    first = store.load(tmp_path)
    assert len(first) == 8 and set(first.status) <= {"ok", "error"}
    killed = first[first.status == "error"]
    assert len(killed) <= 1 and killed.reason.str.startswith("worker process died").all()
    summary = runner.run([Case(action="slow", seq_len=n) for n in range(1, 9)], SUITE, tmp_path,
                         progress=False)
    assert summary.retried == len(killed)
    assert (store.load(tmp_path).status == "ok").all() and len(store.load(tmp_path)) == 8


@pytest.mark.slow
def test_sigkill_loses_at_most_the_case_in_flight_and_resume_finishes(tmp_path):
    proc = start_run(tmp_path, n_cases=8)  # killed after 3 rows: 5 cases of 0.3 s left to kill it in
    wait_for_records(tmp_path, 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = store.load(tmp_path)  # every file on disk is a whole, readable row
    assert 3 <= len(kept) < 8 and (kept.status == "ok").all()
    assert only_records(tmp_path) == []  # no temp file, no partial record
    cases = [Case(action="slow", seq_len=n) for n in range(1, 9)]
    summary = runner.run(cases, SUITE, tmp_path, timeout_s=10, progress=False)
    assert summary.skipped_as_done == len(kept)
    assert sorted(store.load(tmp_path).seq_len) == list(range(1, 9))


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    """The check above can fail: a write that dies half-way leaves a temp file, which `only_records` sees."""
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / ".abc.parquet.1234.tmp").write_bytes(b"half")
    assert only_records(tmp_path) == [".abc.parquet.1234.tmp"]

    def broken(f):
        f.write(b"half a row")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        store.atomic_write(tmp_path / "records" / "x.parquet", broken)
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == [".abc.parquet.1234.tmp"]


@pytest.mark.slow
def test_temp_files_of_a_write_cut_short_are_removed_on_resume(tmp_path):
    runner.run([Case(seq_len=8)], SUITE, tmp_path, progress=False)
    (tmp_path / "records" / ".0123456789abcdef.parquet.1a2b3c4d.tmp").write_bytes(b"half a row")
    (tmp_path / ".peak_matmul.json.5e6f7a8b.tmp").write_bytes(b"{")
    runner.run([Case(seq_len=8)], SUITE, tmp_path, progress=False)
    assert only_records(tmp_path) == [] and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_resume_refuses_a_run_from_another_device(tmp_path):
    runner.run([Case(seq_len=8)], SUITE, tmp_path, progress=False)
    env_file = tmp_path / store.ENVIRONMENT
    env_file.write_text(env_file.read_text().replace('"device": "cpu"', '"device": "cuda"'))
    with pytest.raises(RunDirError, match="pass a new --out"):
        runner.run([Case(seq_len=16)], SUITE, tmp_path, progress=False)


def test_only_a_suite_not_bound_to_its_machine_resumes_on_another_model_of_the_same_device(tmp_path):
    """Speeds belong to one machine; accuracies do not (MACHINE_BOUND = False): such a run resumes on
    another CPU model, its rows name their machine, and environment.json lists the other machine once."""
    rs = store.RunStore(tmp_path)
    here = {"device": "cpu", "device_name": "Intel Xeon", "commit": "a"}
    rs.open(here)
    with pytest.raises(RunDirError, match="holds a run on Intel Xeon"):
        rs.open({**here, "device_name": "AMD EPYC"})
    for _ in range(2):
        rs.open({**here, "device_name": "AMD EPYC", "commit": "b"}, machine_bound=False)
    recorded = json.loads((tmp_path / store.ENVIRONMENT).read_text())
    assert recorded["device_name"] == "Intel Xeon"
    assert [(m["device_name"], m["commit"]) for m in recorded["resumed_on"]] == [("AMD EPYC", "b")]
    with pytest.raises(RunDirError, match="holds a run on Intel Xeon"):  # the device kind still binds
        rs.open({**here, "device": "cuda", "device_name": "AMD EPYC"}, machine_bound=False)


def test_empty_results_load_to_an_empty_frame(tmp_path):
    (tmp_path / "records").mkdir()
    assert isinstance(store.load(tmp_path), pd.DataFrame) and store.load(tmp_path).empty


def test_store_writes_nested_dicts_as_json_even_empty_ones(tmp_path):
    run = store.RunStore(tmp_path)
    run.open({"device": "cpu", "device_name": "CPU"})
    run.write({**ROW, "case_id": "a", "task_params": {}, "extra": {"b": 1, "a": [1, 2]}})
    row = store.load(tmp_path).iloc[0]
    assert row.task_params == "{}" and row.extra == '{"a": [1, 2], "b": 1}'


# --- one run directory, one process ---------------------------------------------------------------

HOLD_SCRIPT = textwrap.dedent("""
    import sys, time
    from harness import store
    with store.RunStore(sys.argv[1]).lock("attnbench run --suite fake"):
        print("held", flush=True)
        time.sleep(60)
""")


def hold_lock(run) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        held = rf"in use by process {holder.pid} on .*attnbench run --suite fake"
        with pytest.raises(RunDirError, match=held):
            runner.run([Case(seq_len=8)], SUITE, tmp_path, progress=False)
        assert not (tmp_path / "records").exists()  # nothing was measured
    finally:
        holder.kill()
        holder.wait()
    # The holder died without letting go (SIGKILL): its lock is taken over.
    assert runner.run([Case(seq_len=8)], SUITE, tmp_path, progress=False).counts == {"ok": 1}


@pytest.mark.slow
def test_a_stale_lock_file_is_taken_over(tmp_path):
    (tmp_path / store.LOCK).write_text('{"pid": 999999999, "host": "gone", "command": "attnbench run"}')
    assert runner.run([Case(seq_len=8)], SUITE, tmp_path, progress=False).counts == {"ok": 1}
    holder = json.loads((tmp_path / store.LOCK).read_text())
    assert holder["pid"] == os.getpid()


@pytest.mark.slow
def test_every_file_of_a_run_gets_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        runner.run([Case(seq_len=8)], SUITE, tmp_path / "run", progress=False)
        render.build([tmp_path / "run"])
        run = store.RunStore(tmp_path / "run")  # a case file beside the compacted one
        run.write({**ROW, "case_id": "0123456789abcdef"})
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {store.ENVIRONMENT, fake_suite.CACHE_FILE, store.LOCK, "report.html", "summary.md",
            "suite-fake.parquet", "0123456789abcdef.parquet"} <= names
    assert {p.relative_to(tmp_path): oct(p.stat().st_mode & 0o777) for p in files} == {
        p.relative_to(tmp_path): oct(0o644) for p in files}


# --- corrupting any file of a run ---------------------------------------------------------------------

def garbage(path):
    path.write_bytes(b"\x00\xffnot what this file should hold" * 3)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path):
    path.write_bytes(b"")


def empty_object(path):
    path.write_text("{}")


def foreign_parquet(path):
    pq.write_table(pa.table({"x": [1, 2], "y": ["a", "b"]}), path)


def other_case(path):
    """A valid record of another case under this file's name."""
    other = sorted(p for p in path.parent.glob("[0-9a-f]*.parquet") if p != path)[0]
    path.write_bytes(other.read_bytes())


def bad_status(path):
    table = pq.read_table(path)
    index = table.column_names.index("status")
    pq.write_table(table.set_column(index, "status", pa.array(["finished"] * table.num_rows)), path)


def other_suite(path):
    """Valid rows, of another suite than the file's name says."""
    table = pq.read_table(path)
    index = table.column_names.index("suite")
    pq.write_table(table.set_column(index, "suite", pa.array(["throughput"] * table.num_rows)), path)


def case_twice(path):
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, table]), path)


def record(run):
    """The second case file of a run (`finished_run` has two beside its compacted file)."""
    return sorted((run / "records").glob("[0-9a-f]*.parquet"))[1]


CORRUPTIONS = {
    "record": (record, [garbage, truncate, empty, foreign_parquet, other_case, bad_status]),
    "compacted": (lambda run: run / "records" / "suite-fake.parquet",
                  [garbage, truncate, empty, foreign_parquet, bad_status, other_suite, case_twice]),
    "environment": (lambda run: run / store.ENVIRONMENT, [garbage, truncate, empty, empty_object]),
    "cache": (lambda run: run / fake_suite.CACHE_FILE, [garbage, truncate, empty]),
    "lock": (lambda run: run / store.LOCK, [garbage, empty]),
}
CORRUPTION_CASES = [(kind, damage) for kind, (_, damages) in CORRUPTIONS.items() for damage in damages]


def assert_complete(run, cases):
    df = store.load(run)
    assert sorted(df.case_id) == sorted(c.case_id for c in cases) and (df.status == "ok").all()
    assert store.RunStore(run).environment()["device"] == "cpu"  # valid again
    cache = run / fake_suite.CACHE_FILE  # moved aside when corrupt, measured again when a case needs it
    assert not cache.exists() or store.read_json(cache)["figure"] == 1.0
    assert only_records(run) == []
    assert [p.name for p in (run / "records").glob("*.parquet")] == ["suite-fake.parquet"]  # compacted


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A complete run of three cases in both layouts (copied by each test that damages it): the first
    compacted, the other two in files of their own, as a resumed run leaves them until it finishes."""
    cases = [Case(seq_len=n) for n in (8, 16, 32)]
    run = tmp_path_factory.mktemp("finished") / "run"
    runner.run(cases[:1], SUITE, run, progress=False)
    run_store, environment = store.RunStore(run), store.RunStore(run).environment()
    for case in cases[1:]:
        status, reason, metrics = runner.execute(SUITE, case, RunContext(run))
        run_store.write(runner.case_row(case, status, reason, metrics, environment, "t0", "t1"))
    return cases, run


# A damaged record or compacted file costs its case(s): one damage of each kind is run again to the end
# (a worker measures the lost case; the resume is the same whatever the damage), the others are followed
# as far as the resume's reading of the run, where the damages differ: each is caught and moved aside, and
# only its cases are left for the resume to measure.
RERUN = {kind: damages[0] for kind, (_, damages) in CORRUPTIONS.items()}


@pytest.mark.parametrize("kind, damage", [  # a damaged record's case measured again: slow
    pytest.param(k, d, id=f"{k}-{d.__name__}",
                 marks=[pytest.mark.slow] if (k, d) == ("record", RERUN[k]) else [])
    for k, d in CORRUPTION_CASES])
def test_corrupting_any_file_then_rerunning_ends_in_a_complete_run_and_a_report(tmp_path, kind, damage,
                                                                                caplog, finished_run):
    cases, run = finished_run[0], tmp_path / "run"
    shutil.copytree(finished_run[1], run)
    target = CORRUPTIONS[kind][0](run)
    damage(target)
    if kind in ("record", "compacted") and damage is not RERUN[kind]:
        with caplog.at_level(logging.WARNING, logger="attnbench"):
            statuses = store.RunStore(run).statuses()  # what the resume reads first
        assert len(statuses) == len(cases) - 1 and set(statuses) < {c.case_id for c in cases}
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and str(target) in warned[0] and "moved to" in warned[0]
        assert len(list((run / "records" / store.CORRUPT).iterdir())) == 1 and not target.exists()
        return
    with caplog.at_level(logging.WARNING, logger="attnbench"):
        summary = runner.run(cases, SUITE, run, progress=False)
    assert_complete(run, cases)
    if kind in ("record", "compacted"):
        assert summary.counts == {"ok": 1}  # the corrupt file's case, measured again
    if kind != "lock":
        warned = [r.getMessage() for r in caplog.records]
        assert len(warned) == 1 and str(target) in warned[0] and "moved to" in warned[0]
        assert len(list((run / "records" / store.CORRUPT).iterdir())) == 1
    report = render.build([run])
    assert report.html.is_file() and "fake" in report.markdown.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("after, kind, damage", [(2, "record", truncate), (5, "environment", garbage),
                                                 (8, "cache", truncate)])
def test_a_run_killed_at_any_point_with_a_file_corrupted_completes_on_rerun(tmp_path, after, kind, damage):
    proc = start_run(tmp_path, n_cases=after + 3)
    wait_for_records(tmp_path, after, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    damage(CORRUPTIONS[kind][0](tmp_path))
    cases = [Case(action="slow", seq_len=n) for n in range(1, after + 4)]
    runner.run(cases, SUITE, tmp_path, progress=False)
    assert_complete(tmp_path, cases)
    assert render.build([tmp_path]).html.is_file()


@pytest.mark.slow
def test_a_truncated_peak_matmul_file_is_measured_again_not_an_error_in_every_case(tmp_path, caplog):
    """The throughput suite's per-run cache: truncated, it used to make every throughput case an error."""
    from suites.throughput import measuring

    peak = tmp_path / measuring.PEAK_FILE
    peak.write_text('{"AMD EPYC float32 2048^3": 0.1')
    with caplog.at_level(logging.WARNING, logger="attnbench"):
        figure = measuring._peak_matmul_tflops("cpu", "test CPU", "float32", tmp_path)
    assert figure > 0 and store.read_json(peak) == {"test CPU float32 2048^3": figure}
    assert (tmp_path / "records" / store.CORRUPT / measuring.PEAK_FILE).is_file()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [f"corrupt {peak}"]
