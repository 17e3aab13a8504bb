"""The long-range suite through the runner: a CI subset of the quick profile, resume, schema, CLI errors."""

import json

import pytest

from harness import contract, runner, store
from suites import accuracy as A
from suites import exactness, long_range
from suites.exactness import ExactnessCase
from tests import test_report_fixtures as fx

SUITE = "suites.long_range"


def quick_subset():
    """Quick passkey cases of three variants: vanilla, mamba and one that cannot run on a CPU."""
    cases = long_range.plan("quick", "cpu", variants=["vanilla", "mamba", "flash-cudnn"])
    return [c for c in cases if c.task == "passkey"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("long-range")
    cases = quick_subset()
    summary = runner.run(cases, SUITE, out, timeout_s=long_range.TIMEOUT_S, progress=False)
    return out, cases, summary


@pytest.mark.slow
def test_quick_subset_rows(quick_run):
    out, cases, summary = quick_run
    df = store.load(out)
    assert len(df) == len(cases) and summary.counts == {"ok": 8, "unsupported": 4}  # 2 lengths x 2 depths
    assert (df[df.variant == "flash-cudnn"].reason == "runs on cuda only").all()
    ok = df[df.status == "ok"]
    assert ok.accuracy.between(0, 1).all() and ok.train_accuracy.between(0, 1).all()
    assert (ok.suite == "long-range").all() and set(ok.family) == {"vanilla", "mamba"}
    assert all(len(curve) >= 1 for curve in ok.loss_curve)
    assert (ok.steps <= ok.max_steps).all()
    assert (ok.tokens_seen == ok.steps * ok.batch_size * ok.train_seq_len).all()
    # parameter parity, recorded in each row
    params = ok.groupby("variant").n_params.first()
    assert params.max() <= 1.1 * params.min()
    # one training per (variant, lr): its first evaluation trains, the others reuse it
    for _, group in ok.sort_values("started_at").groupby("variant"):
        assert group.trained_in_case.tolist() == [True] + [False] * (len(group) - 1)
        assert group.loss_curve.map(tuple).nunique() == 1
    # rows carry every hyper-parameter and the passkey geometry
    row = ok.iloc[0]
    for column in ("lr", "seed", "batch_size", "max_steps", "time_budget_s", "weight_decay", "d_model",
                   "n_layers", "n_heads", "mlp_width", "rope", "task_params", "variant_params", "depth",
                   "key_distance", "wall_s", "stop_reason", "valid_accuracy", "valid_curve",
                   "example_accuracy", "training_id", "lr_used", "chance"):
        assert column in ok.columns and row[column] is not None, column
    assert set(ok[ok.variant == "vanilla"].rope) == {True} and set(ok[ok.variant == "mamba"].rope) == {False}


@pytest.mark.slow
def test_resume_skips_done_cases_and_rows_rebuild_their_case(quick_run):
    out, cases, _ = quick_run
    again = runner.run(cases, SUITE, out, progress=False)
    assert again.skipped_as_done == len(cases) and again.counts == {}
    row = store.load(out).iloc[0]
    fields = {k: row.get(k) for k in A.TaskCase.model_fields}  # all-null columns are not stored
    fields = {k: (json.loads(v) if k in ("params", "task_params") else v) for k, v in fields.items()}
    fields = {k: (tuple(v) if hasattr(v, "__len__") and not isinstance(v, str | dict) else v)
              for k, v in fields.items()}  # Parquet lists back to tuples
    fields = {k: (None if isinstance(v, float) and v != v else v) for k, v in fields.items()}  # NaN: None
    assert A.TaskCase(**fields).case_id == row.case_id


@pytest.mark.slow
def test_accuracy_quick_subset_through_the_runner(tmp_path):
    """Part A of the accuracy suite for one variant and dtype: every check becomes an ok row within its
    tolerance."""
    cases = [c for c in A.plan("quick", "cpu", variants=["longformer"], dtypes=["float32"])
             if isinstance(c, ExactnessCase)]
    summary = runner.run(cases, "suites.accuracy", tmp_path, progress=False)
    df = store.load(tmp_path)
    assert summary.counts == {"ok": len(cases)}
    assert set(df.input_kind) == set(contract.ATTENTION_CHECKS) and df.within_tolerance.all()
    measured = df[df.input_kind.isin(exactness.MEASURED_KINDS)]
    assert (measured.reference == "masked_softmax").all()
    assert (measured.rel_err < 1e-5).all() and (measured.full_attention_err > 0).all()


@pytest.mark.parametrize("args,message", [
    (["--profile", "huge"], "unknown profile"),
    (["--dtype", "int7"], "unknown dtype"),
    (["-v", "nope"], "unknown variant"),
    (["--seeds", "-1"], "--seeds must be between 0 and 100, got -1"),
    (["--finding", "nope"], "unknown finding 'nope'; choose one of: mqar, selective_copying"),
    (["--criterion", "1.5"], "--criterion must be in (0, 1], got 1.5"),
    (["--criterion", "0"], "--criterion must be in (0, 1], got 0"),
    (["--suite", "throughput", "--seeds", "3"], "--seeds applies to the learned-task suites"),
])
def test_cli_argument_errors_exit_2(tmp_path, args, message, monkeypatch, capsys):
    """In-process (an interpreter each added nothing: the command line's own tests run it in one)."""
    suite = [] if "--suite" in args else ["--suite", "long-range"]
    code, _, err = fx.run_cli(monkeypatch, capsys, "run", *suite, "--device", "cpu", "--profile", "standard",
                              "--out", tmp_path / "run", *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "run").exists()


def test_seeds_finding_and_criterion_shape_the_plan():
    cases = long_range.plan("standard", "cpu", findings=["induction"], seeds=1, criterion=0.5)
    assert cases and {c.experiment for c in cases} == {"induction_extrapolation"}
    assert {c.seed for c in cases} == {0} and {c.criterion for c in cases} == {0.5}
    assert all(c.lr is not None for c in cases)  # one seed: every rate of the sweep trains
    assert not long_range.plan("standard", "cpu", findings=["mqar"])  # an accuracy-suite finding
    accuracy = A.plan("standard", "cpu", findings=["mqar"])
    assert accuracy and all(isinstance(c, A.TaskCase) for c in accuracy)  # no Part A
