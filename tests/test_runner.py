"""The runner and the results store: failures become rows, writes are atomic, runs resume."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from harness import runner, store
from tests.fake_suite import Case

SUITE = "tests.fake_suite"


def rows(path):
    return store.load(path).set_index("seq_len").sort_index()


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
    assert df.loc["crash", "status"] == "error" and "died" in df.loc["crash", "reason"]


def test_oom_skips_larger_sizes_of_the_same_group(tmp_path):
    cases = [Case(action="oom", seq_len=n) for n in (8, 16, 32, 64, 128)] + [Case(action="ok", seq_len=128)]
    runner.run(cases, SUITE, tmp_path, progress=False)
    df = store.load(tmp_path)
    oom = df[df.action == "oom"].set_index("seq_len")["status"].to_dict()
    assert oom == {8: "ok", 16: "ok", 32: "oom", 64: "skipped", 128: "skipped"}
    assert df[df.action == "ok"].status.tolist() == ["ok"]  # another group is not affected


def test_unsupported_is_recorded_not_run(tmp_path):
    runner.run([Case(device="cuda", seq_len=8)] if not _cuda() else [], SUITE, tmp_path, progress=False)
    if not _cuda():
        row = store.load(tmp_path).iloc[0]
        assert row.status == "unsupported" and row.reason == "no CUDA device"
        assert row.device_name == "no CUDA device"
        assert (row.family, row.exact) == ("vanilla", True)  # registry facts on failed rows too


def _cuda():
    import torch
    return torch.cuda.is_available()


def test_schema_round_trip(tmp_path):
    case = Case(action="ok", seq_len=8, params={"window": 4})
    runner.run([case], SUITE, tmp_path, progress=False)
    row = store.load(tmp_path).iloc[0]
    assert row.schema_version == store.SCHEMA_VERSION
    assert row.case_id == case.case_id
    rebuilt = Case(**{k: (eval(row[k]) if k == "params" else row[k]) for k in Case.model_fields})
    assert rebuilt == case and rebuilt.case_id == case.case_id
    for column in ("device_name", "torch", "commit", "started_at", "finished_at", "status", "reason",
                   "family", "exact", "backend"):
        assert column in row.index
    env = store.RunStore(tmp_path).environment()
    assert env["schema_version"] == store.SCHEMA_VERSION and env["device"] == "cpu"


def test_load_reads_several_runs_in_one_call(tmp_path):
    runner.run([Case(seq_len=8)], SUITE, tmp_path / "a", progress=False)
    runner.run([Case(seq_len=16)], SUITE, tmp_path / "b", progress=False)
    both = store.load(tmp_path / "a", tmp_path / "b")
    assert sorted(both.seq_len) == [8, 16] and both.run_dir.nunique() == 2
    assert len(store.load(tmp_path)) == 2  # a folder of runs


def test_resume_skips_finished_cases(tmp_path):
    cases = [Case(seq_len=n) for n in (8, 16)]
    runner.run(cases[:1], SUITE, tmp_path, progress=False)
    first = os.path.getmtime(next((tmp_path / "records").iterdir()))
    summary = runner.run(cases, SUITE, tmp_path, progress=False)
    assert summary.skipped_as_done == 1 and summary.counts == {"ok": 1}
    assert len(store.load(tmp_path)) == 2
    assert min(os.path.getmtime(p) for p in (tmp_path / "records").iterdir()) == first


def test_sigkill_loses_at_most_the_case_in_flight_and_resume_finishes(tmp_path):
    script = textwrap.dedent(f"""
        from harness import runner
        from tests.fake_suite import Case
        cases = [Case(action="slow", seq_len=n) for n in range(1, 21)]
        runner.run(cases, {SUITE!r}, {str(tmp_path)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 60
    while len(store.RunStore(tmp_path).finished()) < 3 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = store.load(tmp_path)  # every file on disk is a whole, readable row
    assert 3 <= len(kept) < 20 and (kept.status == "ok").all()
    assert not list((tmp_path / "records").glob("*.parquet.tmp"))
    cases = [Case(action="slow", seq_len=n) for n in range(1, 21)]
    summary = runner.run(cases, SUITE, tmp_path, timeout_s=10, progress=False)
    assert summary.skipped_as_done == len(kept)
    assert sorted(store.load(tmp_path).seq_len) == list(range(1, 21))


def test_resume_refuses_a_run_from_another_device(tmp_path):
    runner.run([Case(seq_len=8)], SUITE, tmp_path, progress=False)
    env_file = tmp_path / store.ENVIRONMENT
    env_file.write_text(env_file.read_text().replace('"device": "cpu"', '"device": "cuda"'))
    with pytest.raises(ValueError, match="pass a new --out"):
        runner.run([Case(seq_len=16)], SUITE, tmp_path, progress=False)


def test_empty_results_load_to_an_empty_frame(tmp_path):
    (tmp_path / "records").mkdir()
    assert isinstance(store.load(tmp_path), pd.DataFrame) and store.load(tmp_path).empty


def test_store_writes_nested_dicts_as_json_even_empty_ones(tmp_path):
    run = store.RunStore(tmp_path)
    run.open({"device": "cpu", "device_name": "CPU"})
    run.write({"case_id": "a", "task_params": {}, "extra": {"b": 1, "a": [1, 2]}})
    row = store.load(tmp_path).iloc[0]
    assert row.task_params == "{}" and row.extra == '{"a": [1, 2], "b": 1}'
