"""Compaction: a finished run's rows fold into one Parquet file per suite and read back the same, every
row, column and type; a kill at any point of it loses nothing; the store reads both layouts and a mix
(a case's own file supersedes its compacted row); resume, --retry, --fresh, merge and report work on a
compacted run; `attnbench compact` and its bad input."""

import logging
import shutil
from pathlib import Path

import pandas.testing
import pyarrow as pa
import pytest

from harness import merge, runner, store
from harness.report import charts, render
from tests import test_report_fixtures as fx
from tests.fake_suite import Case
from tests.test_runner import ROW, SUITE, hold_lock

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference"


def case_files(run) -> list[str]:
    return sorted(p.name for p in (Path(run) / store.RECORDS).glob("*.parquet") if store.suite_of(p) is None)


def suite_files(run) -> list[str]:
    return sorted(p.name for p in (Path(run) / store.RECORDS).glob("*.parquet") if store.suite_of(p))


def reference_sample(per_group: int = 2) -> list[pa.Table]:
    """A few committed rows of every kind (suite, task, kind, status, with and without criterion_holds),
    each as the one-row table a case file holds: the columns it has a value in."""
    picked, seen = [], {}
    for run in store.run_dirs([REFERENCE]):
        table = store.RunStore(run).table()
        for index, row in enumerate(table.to_pylist()):
            key = tuple(row.get(k) for k in ("suite", "task", "kind", "status", "criterion_holds"))
            if seen.setdefault(key, 0) < per_group:
                seen[key] += 1
                one = table.slice(index, 1)
                picked.append(one.select([c for c in one.column_names if one.column(c).null_count == 0]))
    return picked


def stored_types(run) -> dict[str, dict[str, str]]:
    """case_id -> the Arrow type, in the file that holds the row, of each column it has a value in (a
    case's own file first, as the store reads them). An empty list has no element type: compacted, it
    takes the one the suite's other rows give."""
    found: dict[str, dict[str, str]] = {}
    files = sorted((Path(run) / store.RECORDS).glob("*.parquet"), key=lambda p: store.suite_of(p) is not None)
    for file in files:
        table = store.read_rows(file)
        for i, case_id in enumerate(table.column("case_id").to_pylist()):
            one = table.slice(i, 1)
            found.setdefault(case_id, {c: "empty list" if one.column(c).to_pylist() == [[]]
                                       else str(one.schema.field(c).type)
                                       for c in one.column_names if one.column(c).null_count == 0})
    return found


def snapshot(run):
    """What a reader sees of a run: its rows (values and Python types), each column's stored Arrow type
    per row, and the DataFrame `store.load` gives."""
    run_store = store.RunStore(run)
    rows = run_store.rows(run_store.statuses())
    frame = store.load(run).drop(columns="run_dir").set_index("case_id").sort_index()
    return ({k: {c: (v, type(v)) for c, v in r.items()} for k, r in rows.items()}, stored_types(run),
            frame[sorted(frame.columns)])


@pytest.fixture(scope="module")
def varied_run(tmp_path_factory):
    """Case files of every suite, as `RunStore.write` makes them (the report fixtures' rows: every status,
    columns some rows lack, lists, dicts as JSON). The committed rows are the next test's."""
    return fx.full_run(tmp_path_factory.mktemp("varied") / "run")


@pytest.mark.slow
def test_compaction_loses_no_row_column_or_type(varied_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(varied_run, run)
    files = case_files(run)
    before = snapshot(run)
    with store.RunStore(run).lock():
        done = store.RunStore(run).compact()
    assert done.folded == len(files) and not done.kept
    assert case_files(run) == []
    assert suite_files(run) == [f"suite-{s}.parquet" for s in ("accuracy", "long-range", "throughput")]
    assert sum(done.rows.values()) == len(files)
    after = snapshot(run)
    assert after[0] == before[0]  # every row: each value and its Python type
    assert after[1] == before[1]  # each column's Arrow type in every row
    pandas.testing.assert_frame_equal(after[2], before[2])  # the DataFrame the report reads
    with store.RunStore(run).lock():
        again = store.RunStore(run).compact()  # nothing left to fold: a no-op
    assert again.folded == 0 and again.rows == done.rows and snapshot(run)[0] == before[0]


def test_the_committed_reference_rows_read_the_same_from_case_files_and_compacted(tmp_path):
    """The real rows, of every kind, through a round trip: case files, compacted, read back."""
    run = tmp_path / "run"
    run_store = store.RunStore(run)
    sample = reference_sample(per_group=1)
    for table in sample:
        run_store.write_record(table)
    before = snapshot(run)
    with run_store.lock():
        run_store.compact()
    assert case_files(run) == [] and snapshot(run)[:2] == before[:2]
    assert len(before[0]) == len(sample) > 20


def fake_rows(run, statuses: dict[int, str]) -> list[Case]:
    """Rows of the fake suite written straight to a run: seq_len -> status."""
    cases = [Case(seq_len=n) for n in statuses]
    run_store = store.RunStore(run)
    with run_store.lock():
        run_store.open(runner.env.describe("cpu"))
        for case, status in zip(cases, statuses.values(), strict=True):
            run_store.write({**ROW, "case_id": case.case_id, **case.flat(), "status": status,
                             "reason": "earlier"})
    return cases


def compact(run) -> store.Compaction:
    with store.RunStore(run).lock():
        return store.RunStore(run).compact()


def test_a_case_file_supersedes_its_compacted_row_until_the_next_compaction_folds_it_in(tmp_path):
    first, second = fake_rows(tmp_path, {8: "error", 16: "ok"})
    compact(tmp_path)
    run_store = store.RunStore(tmp_path)
    run_store.write({**ROW, "case_id": first.case_id, **first.flat(), "status": "ok", "reason": "again"})
    assert case_files(tmp_path) == [f"{first.case_id}.parquet"]
    for reader in (lambda: run_store.statuses()[first.case_id],
                   lambda: run_store.rows([first.case_id])[first.case_id]["status"],
                   lambda: store.load(tmp_path).set_index("case_id").loc[first.case_id, "status"]):
        assert reader() == "ok"
    assert len(store.load(tmp_path)) == 2  # one row per case
    assert compact(tmp_path).folded == 1 and case_files(tmp_path) == []
    assert run_store.rows([first.case_id])[first.case_id]["reason"] == "again"
    assert run_store.statuses() == {first.case_id: "ok", second.case_id: "ok"}


@pytest.mark.parametrize("cut", ["writing the suite file", "before deleting the case files",
                                 "deleting the case files"])
def test_a_compaction_cut_short_anywhere_loses_nothing_and_the_next_one_finishes(tmp_path, monkeypatch, cut):
    fake_rows(tmp_path, {8: "ok"})
    compact(tmp_path)  # a suite file to rewrite
    cases = fake_rows(tmp_path, {8: "ok", 16: "error", 32: "ok"})[1:]
    before = snapshot(tmp_path)[0]

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # the same as a kill here: nothing after it runs

    if cut == "writing the suite file":  # written and synced, not yet renamed into place
        monkeypatch.setattr(store.os, "replace", die)
    elif cut == "before deleting the case files":
        monkeypatch.setattr(store, "_fsync_dir", die)
    else:
        real_unlink = Path.unlink
        calls = []

        def unlink_once(path, *args, **kwargs):
            if calls:
                raise KeyboardInterrupt
            calls.append(path)
            return real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(Path, "unlink", unlink_once)
    with pytest.raises(KeyboardInterrupt):
        compact(tmp_path)
    monkeypatch.undo()
    assert snapshot(tmp_path)[0] == before
    assert [p.name for p in (tmp_path / store.RECORDS).iterdir() if p.name.endswith(".tmp")] == []
    assert compact(tmp_path).rows == {"fake": 3} and case_files(tmp_path) == []
    assert snapshot(tmp_path)[0] == before and len(before) == len(cases) + 1


def test_rows_of_two_types_keep_their_case_files_with_one_warning(tmp_path, caplog):
    fake_rows(tmp_path, {8: "ok"})
    run_store = store.RunStore(tmp_path)
    run_store.write({**ROW, "case_id": "a" * 16, "figure": 3})
    run_store.write({**ROW, "case_id": "b" * 16, "figure": 2.5})
    before = snapshot(tmp_path)[0]
    with caplog.at_level(logging.WARNING, logger="attnbench"):
        done = compact(tmp_path)
    assert done.kept == {"fake": "column 'figure' is double in some rows, int64 in others"} and not done.rows
    assert len(caplog.records) == 1 and "figure" in caplog.records[0].getMessage()
    assert len(case_files(tmp_path)) == 3 and suite_files(tmp_path) == []
    assert snapshot(tmp_path)[0] == before  # 3 stays an int, 2.5 a float


def test_rows_reads_either_layout_and_leaves_out_ids_without_a_row(tmp_path):
    a, b = fake_rows(tmp_path, {8: "ok", 16: "error"})
    run_store = store.RunStore(tmp_path)
    per_case = run_store.rows([a.case_id, b.case_id, "0" * 16])
    compact(tmp_path)
    assert run_store.rows([a.case_id, b.case_id, "0" * 16]) == per_case
    assert set(per_case) == {a.case_id, b.case_id} and per_case[b.case_id]["status"] == "error"
    assert Case.from_row(per_case[a.case_id]) == a  # the row rebuilds its case
    assert run_store.rows([]) == {} and store.RunStore(tmp_path / "none").rows([a.case_id]) == {}
    for bad in ("../x", "suite-fake", ".hidden", ""):
        with pytest.raises(ValueError, match="cannot name a record file"):
            run_store.rows([bad])


class InterruptedExecutor(runner.LocalExecutor):
    """Runs the first case, then Ctrl-C."""

    def events(self, cases, suite_module, timeout_s, skips, context):
        for i, event in enumerate(super().events(cases, suite_module, timeout_s, skips, context)):
            yield event
            if i == 1:
                raise KeyboardInterrupt


@pytest.mark.slow
def test_a_finished_run_is_compacted_and_an_interrupted_one_keeps_its_case_files(tmp_path):
    cases = [Case(seq_len=n) for n in (8, 16, 32)]
    summary = runner.run(cases, SUITE, tmp_path, progress=False, executor=InterruptedExecutor())
    assert summary.interrupted and summary.compaction is None
    assert case_files(tmp_path) == [f"{cases[0].case_id}.parquet"] and suite_files(tmp_path) == []
    summary = runner.run(cases, SUITE, tmp_path, progress=False)
    assert summary.skipped_as_done == 1 and summary.counts == {"ok": 2}
    assert summary.compaction.rows == {"fake": 3} and summary.compaction.folded == 3
    assert case_files(tmp_path) == [] and suite_files(tmp_path) == ["suite-fake.parquet"]


@pytest.mark.slow
def test_a_compacted_run_resumes_retries_and_starts_over(tmp_path):
    done_before, failed = fake_rows(tmp_path, {8: "ok", 16: "error"})
    compact(tmp_path)
    new = Case(seq_len=32)
    summary = runner.run([done_before, failed, new], SUITE, tmp_path, progress=False)  # --retry failed
    assert summary.skipped_as_done == 1 and summary.retried == 1 and summary.counts == {"ok": 2}
    rows = store.RunStore(tmp_path).rows([done_before.case_id, failed.case_id, new.case_id])
    assert rows[done_before.case_id]["reason"] == "earlier"  # kept, not measured again
    assert rows[failed.case_id]["status"] == "ok" and case_files(tmp_path) == []
    summary = runner.run([done_before, new], SUITE, tmp_path, progress=False, retry="all")
    assert summary.retried == 2 and store.RunStore(tmp_path).rows([done_before.case_id])[
        done_before.case_id]["reason"] == ""
    summary = runner.run([new], SUITE, tmp_path, progress=False, fresh=True)
    assert summary.skipped_as_done == 0 and list(store.load(tmp_path).case_id) == [new.case_id]


@pytest.mark.slow
def test_merge_reads_both_layouts_and_writes_a_compacted_run(tmp_path, monkeypatch):
    compacted = fx.write_run(tmp_path / "a", fx.throughput_rows())
    compact(compacted)
    per_case = fx.write_run(tmp_path / "b", fx.accuracy_rows())
    later = fx.throughput_rows()[0] | {"finished_at": "2099-01-01T00:00:00+00:00"}
    store.RunStore(per_case).write({**later, "device_name": fx.DEVICE_NAME})  # a newer row of a case of a
    result = merge.merge(tmp_path / "merged", [compacted, per_case])
    assert case_files(tmp_path / "merged") == [] and suite_files(tmp_path / "merged") == [
        "suite-accuracy.parquet", "suite-throughput.parquet"]
    merged = store.load(tmp_path / "merged").set_index("case_id")
    assert result.rows == len(merged) == len(fx.throughput_rows()) + len(fx.accuracy_rows())
    assert result.duplicates == 1 and merged.loc[later["case_id"], "finished_at"] == later["finished_at"]
    sources = snapshot(tmp_path / "a")[0] | snapshot(tmp_path / "b")[0]
    mine = snapshot(tmp_path / "merged")[0]
    assert {k: v for k, v in mine.items() if k != later["case_id"]} == {
        k: v for k, v in sources.items() if k != later["case_id"]}  # copied value for value
    # The merged run reports: every chart drawn from its rows; writing the SVGs (most of the time, and no
    # part of reading a compacted run) is left out
    monkeypatch.setattr(charts, "save", lambda fig, out_dir, name: Path(out_dir) / f"{name}.svg")
    assert render.build([tmp_path / "merged"]).html.is_file()


def test_compact_command_and_its_bad_input(tmp_path, monkeypatch, capsys):
    fake_rows(tmp_path / "runs" / "one", {8: "ok", 16: "error"})
    fake_rows(tmp_path / "runs" / "two", {8: "ok"})
    code, out, _ = fx.run_cli(monkeypatch, capsys, "compact", tmp_path / "runs")
    assert code == 0 and out.count("rows per suite: fake") == 2 and "2 case files folded in" in out
    assert suite_files(tmp_path / "runs" / "one") == ["suite-fake.parquet"]
    code, out, _ = fx.run_cli(monkeypatch, capsys, "compact", tmp_path / "runs" / "one")
    assert code == 0 and "fake 2; 0 case files folded in" in out
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    holder = hold_lock(tmp_path / "runs" / "two")
    try:
        for args, says in ([tmp_path / "missing"], "no such directory"), ([tmp_path / "file"], "is a file"), \
                ([tmp_path / "empty"], "no run"), ([tmp_path / "runs" / "two"], "in use by process"), \
                ([], "Missing argument"):
            code, _, err = fx.run_cli(monkeypatch, capsys, "compact", *args)
            assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, (args, err)
            assert err.startswith("attnbench: error: ")
    finally:
        holder.kill()
        holder.wait()
