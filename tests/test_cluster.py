"""`attnbench run --executor ray` on a real two-node Ray cluster on this machine (tests/ray_cluster.py):
the same case ids and statuses as the local executor, a node killed mid-sweep loses no row, a hang is a
`timeout` row, bad input is one line and exit code 2."""

import os
import signal
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

try:
    import ray
except ImportError:
    if os.environ.get("CI"):  # nox -s tests installs the cluster extra: here a missing Ray is a failure
        raise
    pytest.skip("Ray is not installed: pip install -e .[cluster]", allow_module_level=True)

from harness import cluster as ray_executor
from harness import plugins, runner, store
from tests import test_report_fixtures as fx
from tests.fake_suite import Case
from tests.ray_cluster import LocalCluster, free_port

SUITE = "tests.fake_suite"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    local = LocalCluster(tmp_path_factory.mktemp("ray")).start()
    yield local
    local.stop()


# The CPU quick throughput plan of three variants that give the statuses the whole plan gives on a CPU (ok;
# unsupported everywhere; unsupported in one mode), at its longer length (every case kind the shorter one
# has, and two more): the whole plan takes minutes on 2 shared cores.
QUICK_VARIANTS = ["-v", "vanilla", "-v", "flash-cudnn", "-v", "longformer-banded"]
QUICK_LENGTH = 512


@pytest.mark.slow
def test_quick_throughput_plan_gives_the_local_case_ids_and_statuses(cluster, tmp_path, monkeypatch, capsys):
    common = ["run", "--suite", "throughput", "--device", "cpu", "--profile", "quick", "--no-progress",
              *QUICK_VARIANTS, "-n", QUICK_LENGTH]
    code, _, _ = fx.run_cli(monkeypatch, capsys, *common, "--out", tmp_path / "local")
    assert code == 0
    code, out, _ = fx.run_cli(monkeypatch, capsys, *common, "--out", tmp_path / "ray", "--executor", "ray",
                              "--ray-address", cluster.address)
    assert code == 0, out
    local = store.load(tmp_path / "local").set_index("case_id").sort_index()
    on_ray = store.load(tmp_path / "ray").set_index("case_id").sort_index()
    planned = plugins.suite("throughput").plan(profile="quick", device="cpu", variants=QUICK_VARIANTS[1::2],
                                               seq_lens=[QUICK_LENGTH])
    assert list(on_ray.index) == list(local.index) and len(local) == len(planned)
    assert (on_ray.status == local.status).all() and set(local.status) == {"ok", "unsupported"}
    assert (on_ray.attempts == 1).all() and on_ray.node_id.nunique() == 2  # both nodes took cases
    assert on_ray.hostname.notna().all() and on_ray.device_name.notna().all()
    environment = store.RunStore(tmp_path / "ray").environment()
    assert environment["executor"] == "ray" and len(environment["ray_nodes"]) == 2
    assert not ray.is_initialized()  # the command disconnected


@pytest.mark.slow
def test_a_hanging_case_is_a_timeout_row_and_its_chain_goes_on(cluster, tmp_path):
    cases = [Case(action="hang_first", seq_len=8), Case(action="hang_first", seq_len=16),
             Case(action="ok", seq_len=8)]
    summary = runner.run(cases, SUITE, tmp_path, timeout_s=3, progress=False,
                         executor=ray_executor.RayExecutor(cluster.address))
    rows = store.load(tmp_path).set_index(["action", "seq_len"])
    assert summary.counts == {"timeout": 1, "ok": 2}
    hung = rows.loc[("hang_first", 8)]
    assert hung.status == "timeout" and "3 s" in hung.reason and isinstance(hung.node_id, str)
    # the same chain's next case ran after the timeout, in the worker process Ray started in its place
    assert rows.loc[("hang_first", 16), "status"] == "ok"


@pytest.mark.slow
def test_a_case_lost_on_every_try_is_an_error_row_naming_the_loss(cluster, tmp_path):
    cases = [Case(action="crash", seq_len=8)]  # SIGKILLs its worker process, on every try
    summary = runner.run(cases, SUITE, tmp_path, progress=False,
                         executor=ray_executor.RayExecutor(cluster.address, max_retries=1))
    row = store.load(tmp_path).iloc[0]
    assert summary.counts == {"error": 1} and row.attempts == 2
    assert row.reason.startswith("worker process died on each of 2 attempts (WorkerCrashedError")


@pytest.mark.slow
def test_resume_sends_only_the_cases_without_a_row(cluster, tmp_path):
    first = [Case(action="ok", seq_len=n) for n in (8, 16)]
    runner.run(first, SUITE, tmp_path, progress=False, executor=ray_executor.RayExecutor(cluster.address))
    before = store.RunStore(tmp_path).rows(c.case_id for c in first)
    summary = runner.run(first + [Case(action="ok", seq_len=32)], SUITE, tmp_path, progress=False,
                         executor=ray_executor.RayExecutor(cluster.address))
    assert summary.skipped_as_done == 2 and summary.counts == {"ok": 1}
    after = store.RunStore(tmp_path).rows(c.case_id for c in first)
    assert after == before and len(before) == 2 and len(store.load(tmp_path)) == 3


@pytest.mark.slow  # the Ray cluster; with the other cluster tests
def test_a_case_on_a_node_finds_the_rows_it_needs(cluster, tmp_path):
    """Nodes share no filesystem: a row the run held when the chain was sent is handed to it, and a row its
    own chain made on the node is kept there for the cases after it."""
    earlier = Case(action="ok", seq_len=8)
    runner.run([earlier], SUITE, tmp_path, progress=False, executor=ray_executor.RayExecutor(cluster.address))
    first = Case(action="read_rows", seq_len=8, params={"needs": [earlier.case_id]})
    second = Case(action="read_rows", seq_len=16, params={"needs": [earlier.case_id, first.case_id]})
    assert first.oom_key()[0] == second.oom_key()[0]  # one chain: `first` runs on the node before `second`
    summary = runner.run([first, second], SUITE, tmp_path, progress=False,
                         executor=ray_executor.RayExecutor(cluster.address))
    rows = store.load(tmp_path).set_index("case_id")
    assert summary.counts == {"ok": 2}
    assert list(rows.loc[first.case_id, "found"]) == [16.0]
    assert list(rows.loc[second.case_id, "found"]) == [16.0, 16.0]


@pytest.mark.slow
def test_oom_skips_larger_sizes_on_the_cluster_too(cluster, tmp_path):
    cases = [Case(action="oom", seq_len=n) for n in (8, 16, 32, 64, 128)]
    runner.run(cases, SUITE, tmp_path, progress=False, executor=ray_executor.RayExecutor(cluster.address))
    statuses = store.load(tmp_path).set_index("seq_len").status.to_dict()
    assert statuses == {8: "ok", 16: "ok", 32: "oom", 64: "skipped", 128: "skipped"}


@pytest.mark.slow
def test_cuda_on_a_cluster_without_gpus_is_one_line_and_exit_code_2(cluster, tmp_path, monkeypatch, capsys):
    code, _, err = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cuda",
                              "--executor", "ray", "--ray-address", cluster.address, "--out", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Ray cluster has no GPU" in err
    assert not ray.is_initialized()


@pytest.mark.slow
def test_killing_a_node_mid_sweep_loses_no_finished_row(cluster, tmp_path):
    # 4 chains of 4 one-second cases, one CPU per node: when the second node has finished a case, the
    # next one of its chain is in flight there, and outlives the raylet by less than a second
    variants = ("vanilla", "linear", "performer", "flash-sdpa")
    cases = [Case(variant=v, action="sleep", seq_len=ms) for v in variants for ms in (1000, 1001, 1002, 1003)]
    executor = ray_executor.RayExecutor(cluster.address)
    second = next(n["NodeID"] for n in ray.nodes()
                  if n["Alive"] and "node:__internal_head__" not in n["Resources"])
    kept_before_kill: dict[str, dict] = {}

    def kill_the_second_node_once_it_finished_a_case():
        records = tmp_path / store.RECORDS
        while not any(pq.read_table(f, columns=["node_id"])[0][0].as_py() == second
                      for f in (records.glob("*.parquet") if records.is_dir() else [])):
            time.sleep(0.02)
        kept_before_kill.update(store.RunStore(tmp_path).rows(p.stem for p in records.glob("*.parquet")))
        os.kill(cluster.nodes[1].raylet_pid(), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_second_node_once_it_finished_a_case, daemon=True)
    killer.start()
    try:
        summary = runner.run(cases, SUITE, tmp_path, timeout_s=30, progress=False, executor=executor)
    finally:
        killer.join(timeout=60)
        cluster.ensure_nodes()
    rows = store.load(tmp_path)
    assert summary.counts == {"ok": len(cases)} and sorted(rows.case_id) == sorted(c.case_id for c in cases)
    after = store.RunStore(tmp_path).rows(kept_before_kill)  # the run compacted, every row as it was
    assert kept_before_kill and after == kept_before_kill
    retried = rows[rows.attempts > 1]
    assert len(retried) >= 1 and (retried.attempts == 2).all()  # the case in flight on the lost node ...
    assert (retried.node_id != second).all()  # ... ran again on the head


@pytest.mark.parametrize("args, says", [
    (["--executor", "ray", "--ray-address", "127.0.0.1:PORT"], "nothing answers there"),
    (["--executor", "ray", "--ray-address", "no-port"], "HOST:PORT"),
    (["--executor", "dask"], "use local or ray"),
    (["--ray-address", "127.0.0.1:6379"], "needs --executor ray"),
])
def test_bad_cluster_input_is_one_line_and_exit_code_2(args, says, tmp_path, monkeypatch, capsys):
    args = [a.replace("PORT", str(free_port())) for a in args]
    code, _, err = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cpu",
                              "--out", tmp_path / "run", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "run").exists() and not ray.is_initialized()


@pytest.mark.slow
def test_executor_ray_without_ray_installed_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, _, err = fx.run_cli(monkeypatch, capsys, "run", "--suite", "throughput", "--device", "cpu",
                              "--executor", "ray", "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pip install 'attnbench[cluster]'" in err
