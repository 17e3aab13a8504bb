"""attnbench merge: shards merged equal the unsharded run; one row per case (ok first, then the latest);
runs of other commits or torch versions refused unless --allow-mixed; the merged environment names its
sources; a merged report groups by hardware and flags a run that mixes devices; report
--fail-on-regression gives CI its exit code."""

import json
import shutil

import pytest

from harness import merge, store
from harness.report import data
from tests import test_report_fixtures as fx

FILTER = ["--suite", "throughput", "--device", "cpu", "-v", "vanilla", "-v", "linear", "-n", "128",
          "--mode", "fwd", "--no-progress"]


def rows(path, status="ok", device_name=fx.DEVICE_NAME, variant="vanilla", slowdown=1.0, **environment):
    """A run of a few forward rows of one variant, all with one status."""
    picked = [dict(r, status=status) for r in fx.throughput_rows({variant: slowdown})
              if r["mode"] == "fwd" and r["dtype"] == "bfloat16" and r["causal"] and r["variant"] == variant
              and r["seq_len"] <= 4096]
    run = store.RunStore(path)
    run.open({**fx.environment(), "device_name": device_name, **environment})
    for r in picked:
        run.write({**r, "device_name": device_name, **environment})
    return path


@pytest.mark.slow
def test_shards_merged_equal_the_unsharded_run(tmp_path, monkeypatch, capsys):
    for args in ([], ["--shard", "1/2"], ["--shard", "2/2"]):
        name = args[-1].replace("/", "of") if args else "whole"
        code, out, _ = fx.run_cli(monkeypatch, capsys, "run", *FILTER, *args, "--out", tmp_path / name)
        assert code == 0, out
    whole = store.load(tmp_path / "whole")
    one, two = store.load(tmp_path / "1of2"), store.load(tmp_path / "2of2")
    assert len(one) and len(two) and not set(one.case_id) & set(two.case_id)
    code, out, _ = fx.run_cli(monkeypatch, capsys, "merge", tmp_path / "merged", tmp_path / "1of2",
                              tmp_path / "2of2")
    assert code == 0 and f"{len(whole)} rows from 2 runs" in out
    merged = store.load(tmp_path / "merged")
    assert sorted(merged.case_id) == sorted(whole.case_id) and merged.case_id.is_unique
    by_case = merged.set_index("case_id")
    assert (by_case.loc[whole.case_id, "status"].values == whole.status.values).all()
    sources = json.loads((tmp_path / "merged" / store.ENVIRONMENT).read_text())["merged_from"]
    assert [s["run"] for s in sources] == [str(tmp_path / "1of2"), str(tmp_path / "2of2")]
    assert [s["rows_kept"] for s in sources] == [len(one), len(two)]


def test_a_merged_run_merged_again_keeps_its_differing_facts_flat(tmp_path):
    a, b, c = (rows(tmp_path / host, hostname=host) for host in ("a", "b", "c"))
    merge.merge(tmp_path / "ab", [a, b])
    merge.merge(tmp_path / "abc", [tmp_path / "ab", c])
    environment = json.loads((tmp_path / "abc" / store.ENVIRONMENT).read_text())
    assert environment["hostname"] == ["a", "b", "c"]  # not [["a", "b"], "c"]
    assert [s["run"] for s in environment["merged_from"]] == [str(a), str(b), str(c)]


def test_copies_of_one_merged_run_merged_again_list_its_sources_once(tmp_path):
    a, b = (rows(tmp_path / host, hostname=host) for host in ("a", "b"))
    merge.merge(tmp_path / "ab", [a, b])
    shutil.copytree(tmp_path / "ab", tmp_path / "ab-copy")  # topped up apart, as a reference run is
    merge.merge(tmp_path / "again", [tmp_path / "ab", tmp_path / "ab-copy"])
    environment = json.loads((tmp_path / "again" / store.ENVIRONMENT).read_text())
    assert [s["run"] for s in environment["merged_from"]] == [str(a), str(b)]


def test_runs_split_by_experiment_merge_their_recipes_and_keep_a_real_difference_listed(tmp_path):
    entry = lambda h: {"recipe": {"steps": h}, "hash": h}  # noqa: E731
    a = rows(tmp_path / "a", hostname="a", recipes={"mqar": entry("1")}, resumed_on=[{"device_name": "x"}])
    b = rows(tmp_path / "b", hostname="b", recipes={"copy": entry("2")}, resumed_on=[{"device_name": "x"}])
    c = rows(tmp_path / "c", hostname="c", recipes={"mqar": entry("3")})
    merge.merge(tmp_path / "ab", [a, b])
    environment = json.loads((tmp_path / "ab" / store.ENVIRONMENT).read_text())
    assert environment["recipes"] == {"mqar": entry("1"), "copy": entry("2")}
    assert environment["resumed_on"] == [{"device_name": "x"}]
    changes = [{"hash": "9"}]
    d = rows(tmp_path / "d", hostname="d", recipe_changes={"mqar": changes}, recipes={})
    e = rows(tmp_path / "e", hostname="e", recipe_changes={"mqar": [*changes, {"hash": "10"}]})
    f = rows(tmp_path / "f", hostname="f", recipe_changes={})
    merge.merge(tmp_path / "def", [d, e, f])
    environment = json.loads((tmp_path / "def" / store.ENVIRONMENT).read_text())
    assert environment["recipe_changes"] == {"mqar": [*changes, {"hash": "10"}]}  # the longer history
    assert environment["recipes"] == {}  # empty here, absent there: still a map, never a list
    merge.merge(tmp_path / "ac", [a, c])
    environment = json.loads((tmp_path / "ac" / store.ENVIRONMENT).read_text())
    assert environment["recipes"] == [{"mqar": entry("1")}, {"mqar": entry("3")}]  # they disagree: listed


def test_one_row_per_case_ok_first_then_the_latest(tmp_path):
    failed = rows(tmp_path / "failed", status="error")
    ok = rows(tmp_path / "ok")
    result = merge.merge(tmp_path / "merged", [failed, ok])
    merged = store.load(tmp_path / "merged")
    assert result.rows == len(merged) == len(store.load(ok)) and result.duplicates == len(merged)
    assert (merged.status == "ok").all()
    later = store.RunStore(tmp_path / "later")
    later.open(fx.environment())
    first = store.load(ok).iloc[0].to_dict()
    first.pop("run_dir")
    later.write({**first, "finished_at": "2027-01-01T00:00:00+00:00"})
    merge.merge(tmp_path / "merged2", [ok, tmp_path / "later"])
    again = store.load(tmp_path / "merged2").set_index("case_id")
    assert again.loc[first["case_id"], "finished_at"] == "2027-01-01T00:00:00+00:00"


@pytest.mark.parametrize("key, other", [("commit", "def456"), ("torch", "2.11.0")])
def test_runs_of_another_commit_or_torch_are_refused_unless_allow_mixed(key, other, tmp_path, monkeypatch,
                                                                         capsys):
    a = rows(tmp_path / "a")
    b = rows(tmp_path / "b", **{key: other})
    code, _, err = fx.run_cli(monkeypatch, capsys, "merge", tmp_path / "merged", a, b)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--allow-mixed" in err and other in err
    assert not (tmp_path / "merged").exists()
    code, _, _ = fx.run_cli(monkeypatch, capsys, "merge", tmp_path / "merged", a, b, "--allow-mixed")
    environment = json.loads((tmp_path / "merged" / store.ENVIRONMENT).read_text())
    assert code == 0 and environment[key] == [fx.environment()[key], other]
    assert environment["device_name"] == fx.DEVICE_NAME  # what the runs agree on stays a value


def test_merge_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    a = rows(tmp_path / "a")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / store.RECORDS).mkdir()
    for args in (["merged", "missing"], ["merged", "plain"], ["a", "a"], ["a2", "a", "empty"]):
        (tmp_path / "empty").mkdir(exist_ok=True)
        code, _, err = fx.run_cli(monkeypatch, capsys, "merge", *[tmp_path / x for x in args])
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("attnbench: error: "), args
    merge.merge(tmp_path / "merged", [a])
    with pytest.raises(ValueError, match="already holds a run"):
        merge.merge(tmp_path / "merged", [a])


@pytest.mark.slow
def test_a_merged_report_groups_by_hardware_and_flags_mixed_devices(tmp_path, monkeypatch, capsys):
    h100 = rows(tmp_path / "h100")
    h200 = rows(tmp_path / "h200", device_name="NVIDIA H200", variant="flash-sdpa", hostname="gpu-2")
    code, out, _ = fx.run_cli(monkeypatch, capsys, "merge", tmp_path / "merged", h100, h200)
    assert code == 0 and "2 different devices" in out
    results = data.Results.load(tmp_path / "merged")
    assert data.mixed_devices(results.rows) == {str(tmp_path / "merged"): ["NVIDIA H100 80GB HBM3",
                                                                          "NVIDIA H200"]}
    table = data.hardware(results.rows).set_index("device_name")
    assert table.loc["NVIDIA H200", "hostname"] == "gpu-2" and table.rows.sum() == len(results.rows)
    code, _, _ = fx.run_cli(monkeypatch, capsys, "report", tmp_path / "merged")
    summary = (tmp_path / "merged" / "report" / "summary.md").read_text()
    assert code == 0 and "**Mixed hardware**" in summary and "H100 80GB HBM3, H200" in summary
    assert "merged from 2 runs" in summary
    page = (tmp_path / "merged" / "report" / "report.html").read_text()
    assert "Mixed hardware" in page and "gpu-2" in page
    assert data.mixed_devices(data.Results.load(h100).rows) == {}
    # A run of one device, reported alone, is not flagged (its report is a few charts: the fixture's full
    # report, built for this line before, took most of this test's time)
    code, _, _ = fx.run_cli(monkeypatch, capsys, "report", h100)
    assert code == 0 and "Mixed hardware" not in (h100 / "report" / "summary.md").read_text()
    assert "Mixed hardware" not in (h100 / "report" / "report.html").read_text()


@pytest.mark.slow
def test_report_fail_on_regression_exit_code(tmp_path, monkeypatch, capsys):
    current, baseline = rows(tmp_path / "current", slowdown=1.2), rows(tmp_path / "baseline")
    args = ["report", current, "--compare"]
    code, _, err = fx.run_cli(monkeypatch, capsys, *args, baseline, "--fail-on-regression")
    assert code == 1 and "3 regressions" in err and (current / "report" / "summary.md").is_file()
    code, _, _ = fx.run_cli(monkeypatch, capsys, *args, current, "--fail-on-regression")
    assert code == 0  # a run against itself
    code, _, _ = fx.run_cli(monkeypatch, capsys, *args, baseline)
    assert code == 0  # without the flag a regression is reported, not an exit code
    code, _, err = fx.run_cli(monkeypatch, capsys, "report", current, "--fail-on-regression")
    assert code == 2 and "needs --compare" in err
