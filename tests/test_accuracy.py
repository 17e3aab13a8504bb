"""The accuracy suite: the model's parameter parity, learning, claims and plans (Part A: test_exactness)."""

import itertools
import json

import pytest
import torch
from pydantic import ValidationError

from harness import registry
from harness.context import RunContext
from suites import accuracy as A
from suites import findings, grids, long_range
from suites import model as lm
from suites.exactness import ExactnessCase
from suites.learning_rate import choose_lr

# --- the model ------------------------------------------------------------------------------------

def model_configs():
    """One case per distinct model the suites train, in every profile and device, for every variant."""
    configs = {}
    for suite, profile, device in itertools.product((A, long_range), ("quick", "standard", "full"),
                                                    ("cpu", "cuda")):
        for case in suite.plan(profile, device, variants=registry.names()):
            if isinstance(case, A.TaskCase):
                key = (case.task, case.train_task().vocab_size, case.d_model, case.n_layers, case.n_heads,
                       case.short_conv, case.variant, case.mlp_width, case.rope,
                       json.dumps(case.params, sort_keys=True))
                configs.setdefault(key, case)
    return configs


@pytest.mark.slow
def test_parameter_counts_within_ten_percent_across_variants():
    groups = {}
    for key, case in model_configs().items():
        with torch.device("meta"):
            model = A.model_for(case)
        counts = groups.setdefault(key[:6], {})
        counts[case.variant] = (lm.count_parameters(model), model.non_embedding_parameters())
    assert len(groups) > 10
    for config, counts in groups.items():
        assert set(counts) == set(registry.names()), config
        for i in (0, 1):
            values = [c[i] for c in counts.values()]
            assert max(values) <= 1.1 * min(values), (config, counts)


def test_a_remembered_mixer_count_is_the_count_of_the_mixer_built_now(monkeypatch):
    """mixer_parameters remembers its counts (planning asks thousands of times); a mixer that changed is
    counted afresh, never given a stale count."""
    def built(name, d, heads, params):
        with torch.device("meta"):
            return lm.count_parameters(lm.make_mixer(name, d, heads, params))

    for name, params in (("vanilla", {}), ("mamba", {}), ("mamba", {"expand": 1})):
        assert lm.mixer_parameters(name, 64, 2, params) == built(name, 64, 2, params)
        assert lm.mixer_parameters(name, 64, 2, params) == built(name, 64, 2, params)  # remembered
    v = registry.get("mamba")
    wider = lambda d_model, n_heads, **kw: torch.nn.Linear(d_model, 3 * d_model)  # noqa: E731
    monkeypatch.setattr(v, "mixer_factory", wider)
    assert lm.mixer_parameters("mamba", 64, 2, {}) == 64 * 3 * 64 + 3 * 64


def test_mlp_width_compensates_mamba_block():
    d = 64
    assert lm.mlp_width_for("vanilla", d, 2, {}) == lm.MLP_RATIO * d
    assert lm.mlp_width_for("mamba", d, 2, {}) < lm.MLP_RATIO * d
    with pytest.raises(ValueError, match="too large"):
        lm.mlp_width_for("mamba", d, 2, {"expand": 8})


# --- learning -------------------------------------------------------------------------------------

def tiny_mqar(**changes):
    spec = grids.ACCURACY_QUICK[0]
    length = spec.train_seq_lens[0]
    fields = dict(variant="vanilla", device="cpu", task="mqar", seq_len=length, train_seq_len=length,
                  kv_pairs=spec.kv_pairs[0], task_params=spec.task_params, d_model=spec.d_models[0],
                  n_heads=spec.n_heads, lr=spec.lrs[0], batch_size=spec.batch_for(length),
                  max_steps=spec.max_steps, time_budget_s=spec.time_budget_s, n_test=spec.n_test,
                  criterion=spec.criterion, validate_every=spec.validate_every, n_valid=spec.n_valid)
    return A.TaskCase(**{**fields, **changes})


@pytest.mark.slow
def test_vanilla_learns_the_quick_mqar_and_stops_at_the_validation_criterion():
    """Seeded and deterministic on CPU, within the quick profile's step budget. Its time budget is
    lifted here: how many steps fit in it depends on the machine, and a test must not."""
    case = tiny_mqar(time_budget_s=600)
    row = A.run_task(case, RunContext())
    assert row["accuracy"] >= 0.95, row
    assert row["stop_reason"] == "criterion" and row["trained_in_case"]
    assert row["steps"] == row["steps_to_criterion"] < case.max_steps
    assert row["steps"] % case.validate_every == 0 and row["valid_steps"][-1] == row["steps"]
    assert row["valid_curve"][-1] == row["valid_accuracy"] >= case.criterion > max(row["valid_curve"][:-1])
    assert row["tokens_to_criterion"] == row["steps"] * case.batch_size * case.train_seq_len
    assert row["loss_curve"][-1] < row["loss_curve"][0]
    assert len(row["example_accuracy"]) == case.n_test
    assert sum(row["example_accuracy"]) / case.n_test == pytest.approx(row["accuracy"])
    assert row["tokens_seen"] == row["steps"] * case.batch_size * case.train_seq_len


def test_training_stops_once_the_criterion_has_held_at_enough_validations_in_a_row():
    """A validation below the criterion starts the count again; steps_to_criterion is the first hit."""
    case = tiny_mqar(max_steps=50, time_budget_s=600)
    accuracies = iter([0.95, 0.5, 0.95, 0.95, 0.95, 0.95])
    validation = lm.Validation(lambda: next(accuracies), every=2, criterion=0.9, holds=2)
    result = lm.train(A.build_model(case), A.train_batches(case.train_task(), case.batch_size, case.seed),
                      lr=1e-3, max_steps=case.max_steps, time_budget_s=600, weight_decay=0.1, device="cpu",
                      dtype=torch.float32, validation=validation)
    assert [step for step, _ in result.valid_curve] == [2, 4, 6, 8]
    assert result.stop_reason == "criterion" and result.steps == 8 and result.steps_to_criterion == 2


def test_the_case_carries_how_long_the_criterion_must_hold():
    case = tiny_mqar(criterion=0.01, criterion_holds=3, validate_every=5, time_budget_s=600)
    row = A.run_task(case, RunContext())
    assert case.flat()["criterion_holds"] == 3 and row["valid_steps"] == [5, 10, 15]
    assert row["steps"] == 15 and row["steps_to_criterion"] == 5 and row["stop_reason"] == "criterion"
    held = {c.experiment: c.criterion_holds for s in (A, long_range) for c in s.plan("standard", "cpu")
            if isinstance(c, A.TaskCase)}
    assert held["induction_extrapolation"] == held["passkey_window"] == grids.HOLDS_BEYOND_VALIDATION > 1
    assert held["mqar_capacity"] == held["selective_copying"] == 1
    with pytest.raises(ValidationError):
        tiny_mqar(criterion_holds=0)


@pytest.mark.slow
def test_training_is_deterministic_by_seed():
    rows = []
    for seed in (0, 0, 1):
        rows.append(A.run_task(tiny_mqar(max_steps=25, seed=seed, n_test=32, time_budget_s=600),
                               RunContext()))  # a new worker: trained again, not reused
    assert rows[0]["loss_curve"] == rows[1]["loss_curve"] and rows[0]["test_loss"] == rows[1]["test_loss"]
    assert rows[0]["loss_curve"] != rows[2]["loss_curve"]
    assert rows[0]["stop_reason"] == "max_steps" and rows[0]["steps"] == 25
    assert rows[0]["steps_to_criterion"] is None and rows[0]["valid_steps"][-1] == 25  # validated at the end


def test_evaluations_of_one_training_reuse_the_model():
    worker = RunContext()  # one worker's: its cache keeps the model for the next case
    case = dict(task="passkey", train_seq_len=32, task_params={"key_len": 2}, d_model=16, lr=1e-3,
                batch_size=8, max_steps=3, time_budget_s=5, n_test=8, variant="vanilla", device="cpu")
    first = A.run_task(A.TaskCase(seq_len=32, depth=0.0, **case), worker)
    second = A.run_task(A.TaskCase(seq_len=64, depth=1.0, **case), worker)
    assert first["trained_in_case"] and not second["trained_in_case"]
    assert first["loss_curve"] == second["loss_curve"] and first["training_id"] == second["training_id"]
    assert second["key_distance"] == 2 and first["key_distance"] == 32 - 2 - 1  # key_len 2 at depth 1
    assert second["chance"] == pytest.approx(0.01)  # two digits, exact match


def test_divergence_is_a_result_not_an_error():
    row = A.run_task(tiny_mqar(lr=1e6, max_steps=30, n_test=16), RunContext())
    assert row["stop_reason"] in ("diverged", "max_steps")
    assert 0.0 <= row["accuracy"] <= 1.0


def test_listops_trains_a_bidirectional_classifier():
    """LRA's posing: a non-causal encoder for attention, mamba both ways; one class per sequence."""
    base = dict(task="listops", seq_len=48, train_seq_len=48, task_params={"min_length": 8}, d_model=32,
                n_heads=2, lr=3e-3, batch_size=8, max_steps=4, time_budget_s=60, train_pool=64, n_test=16,
                n_valid=16, device="cpu")
    for variant, params in (("vanilla", {}), ("mamba", {})):
        case = A.TaskCase(variant=variant, params=params, **base)
        model = A.build_model(case)
        assert isinstance(model, lm.Classifier) and model.head.out_features == 10
        mixer = model.blocks[0].mixer
        assert isinstance(mixer, lm.Bidirectional) == (variant == "mamba")
        assert case.causal == (variant == "mamba") and getattr(mixer, "causal", False) is False
        if variant == "mamba":  # one mixer, both ways: position 0 sees the whole sequence
            x = torch.randn(2, 12, 32)
            y = mixer(x)
            torch.testing.assert_close(y, mixer.mixer(x) + mixer.mixer(x.flip(1)).flip(1))
            x2 = x.clone()
            x2[:, -1] += 1
            assert not torch.allclose(mixer(x2)[:, 0], y[:, 0])
        row = A.run_task(case, RunContext())
        assert row["steps"] == 4 and 0 <= row["accuracy"] <= 1 and len(row["example_accuracy"]) == 16


def test_bidirectional_mixer_sees_both_sides():
    mixer = lm.make_mixer("mamba", 16, 1, {"expand": 1}, causal=False)
    x = torch.randn(1, 12, 16)
    x2 = x.clone()
    x2[:, 8] += 1.0
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    assert (y2[:, :8] - y[:, :8]).abs().amax() > 1e-6  # the reversed scan carries position 8 backwards
    causal = lm.make_mixer("mamba", 16, 1, {"expand": 1}, causal=True)
    with torch.no_grad():
        torch.testing.assert_close(causal(x2)[:, :8], causal(x)[:, :8], rtol=0, atol=0)


def test_short_convolution_is_causal():
    model = lm.LanguageModel("vanilla", 16, 32, 2, 2, 128, short_conv=4)
    assert isinstance(model.blocks[0].short_conv, lm.ShortConv)
    x = torch.randint(0, 16, (1, 20))
    x2 = x.clone()
    x2[0, 10] = (x[0, 10] + 1) % 16
    with torch.no_grad():
        h, h2 = model.hidden(x), model.hidden(x2)
    torch.testing.assert_close(h2[:, :10], h[:, :10], rtol=0, atol=0)
    with pytest.raises(ValidationError, match="short_conv is causal"):
        A.TaskCase(variant="vanilla", device="cpu", task="listops", seq_len=48, train_seq_len=48,
                   task_params={"min_length": 8}, d_model=32, lr=1e-3, batch_size=8, max_steps=4,
                   time_budget_s=60, short_conv=4)


# --- learning rates: chosen on validation -----------------------------------------------------------

def test_choose_lr_prefers_reaching_the_criterion_early_then_validation_accuracy():
    assert choose_lr([(1e-3, 0.99, 400), (3e-3, 0.995, 200)]) == 3e-3
    assert choose_lr([(1e-3, 0.99, 400), (3e-3, 0.97, None)]) == 1e-3
    assert choose_lr([(1e-3, 0.5, None), (3e-3, 0.7, None)]) == 3e-3
    assert choose_lr([(1e-3, 0.5, None), (3e-3, 0.5, None)]) == 1e-3


@pytest.mark.slow
def test_seeds_after_the_sweep_train_at_the_rate_it_chose(tmp_path):
    spec = grids.TaskSpec("mqar", (8,), (16,), (1e-6, 3e-3), 64, 120, 60.0, kv_pairs=(2,),
                          task_params={"vocab": 8}, n_heads=2, seeds=2, criterion=0.99, validate_every=20,
                          n_valid=32, n_test=32, variants=("vanilla",))
    cases = A.task_cases([spec], "accuracy", "cpu", None, "standard")
    assert [(c.seed, c.lr) for c in cases] == [(0, 1e-6), (0, 3e-3), (1, None)]
    assert A.needs(cases[2]) == [c.case_id for c in cases[:2]] and A.needs(cases[0]) == []
    run_context = RunContext(tmp_path)
    with pytest.raises(RuntimeError, match="no ok row"):
        A.chosen_lr(cases[2], run_context)
    from harness import store
    run = store.RunStore(tmp_path)
    for case in cases[:2]:
        run.write({"case_id": case.case_id, **case.flat(), "status": "ok", **A.run_task(case, RunContext())})
    assert A.chosen_lr(cases[2], run_context) == 3e-3  # 1e-6 learns nothing in 120 steps
    with run.lock():
        run.compact()  # the sweep's rows read the same from the compacted file
    assert A.chosen_lr(cases[2], run_context) == 3e-3 and list(tmp_path.glob("records/*.parquet")) == [
        tmp_path / "records" / "suite-accuracy.parquet"]
    assert A.run_task(cases[2], run_context)["lr_used"] == 3e-3
    # Without the run directory (a Ray node): from the rows handed to the context, as the runner hands them.
    node = run_context.handing(A.needs(cases[2]))
    assert node.run_dir is None and A.chosen_lr(cases[2], node) == 3e-3
    with pytest.raises(RuntimeError, match="no ok row"):
        A.chosen_lr(cases[2], RunContext())


# --- plans ----------------------------------------------------------------------------------------

def test_quick_plan_covers_every_variant_in_both_parts():
    cases = A.plan("quick", "cpu")
    exact = {c.variant for c in cases if isinstance(c, ExactnessCase)}
    learned = {(c.variant, c.task) for c in cases if isinstance(c, A.TaskCase)}
    assert exact == set(registry.names())
    assert learned == set(itertools.product(registry.names(), A.TASKS))
    kinds = {(c.variant, c.input_kind) for c in cases if isinstance(c, ExactnessCase)}
    assert ("mamba", "peaked") not in kinds and ("vanilla", "near_duplicate") in kinds
    assert len({c.case_id for c in cases}) == len(cases)


def test_gpu_standard_trains_one_variant_per_family_unless_asked():
    planned = [c for s in (A, long_range) for c in s.plan("standard", "cuda") if isinstance(c, A.TaskCase)]
    learned = {c.variant for c in planned}
    assert learned == set(grids.STANDARD_LEARNED) | set(grids.RECALL_STATE) | {grids.SELECTION_REMOVED}
    families = {registry.get(n).family for n in learned}
    assert families == {"vanilla", "longformer", "linear", "performer", "mamba", "mamba2", "deltanet"}
    recall = {(c.experiment, c.variant) for c in planned}
    assert {("mqar_capacity", v) for v in grids.RECALL_STATE} <= recall
    assert {(e, v) for e, v in recall if e == "selective_copying"} == {  # the claim and its control
        ("selective_copying", "mamba"), ("selective_copying", grids.SELECTION_REMOVED)}
    asked = {c.variant for c in A.plan("standard", "cuda", variants=["flash-sdpa"])}
    assert asked == {"flash-sdpa"}


def test_cpu_standard_is_one_experiment_per_finding_with_seeds_and_a_sweep():
    cases = [c for s in (A, long_range) for c in s.plan("standard", "cpu") if isinstance(c, A.TaskCase)]
    assert {c.experiment for c in cases} == set(findings.EXPERIMENTS.values())
    for experiment in findings.EXPERIMENTS.values():
        mine = [c for c in cases if c.experiment == experiment]
        spec = next(s for s in grids.ACCURACY_CPU_STANDARD + grids.LONG_RANGE_CPU_STANDARD
                    if s.experiment == experiment)
        assert {c.variant for c in mine} == set(spec.variants)
        assert {c.seed for c in mine} == set(range(spec.seeds)) and spec.seeds >= 3
        assert all(c.dtype == "float32" for c in mine)
        assert all(c.criterion is not None for c in mine) or experiment == "listops_lra"  # LRA: fixed steps
        swept = [c for c in mine if c.lr is None]
        assert all(c.seed > 0 and len(c.lrs) > 1 for c in swept)


def test_dtypes_by_device():
    cuda = {(c.variant, c.dtype) for c in A.plan("quick", "cuda") if isinstance(c, A.TaskCase)}
    assert ("vanilla", "bfloat16") in cuda
    assert {c.dtype for c in A.plan("quick", "cpu") if isinstance(c, A.TaskCase)} == {"float32"}


def test_evaluations_of_a_training_are_consecutive():
    for suite, device in itertools.product((A, long_range), ("cpu", "cuda")):
        keys = [c.training_key() for c in suite.plan("standard", device) if isinstance(c, A.TaskCase)]
        runs = [k for k, _ in itertools.groupby(keys)]
        assert len(runs) == len(set(keys))


def test_bad_input_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="unknown profile"):
        A.plan("huge", "cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        A.plan("quick", "cpu", dtypes=["int7"])
    with pytest.raises(ValueError, match="valid names"):
        long_range.plan("quick", "cpu", variants=["nope"])
    with pytest.raises(ValidationError, match="4 \\* kv_pairs"):
        tiny_mqar(kv_pairs=40)
    with pytest.raises(ValidationError, match="depth"):
        tiny_mqar(depth=0.5)
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        tiny_mqar(criterion=1.5)
    with pytest.raises(ValidationError, match="sweep"):
        tiny_mqar(lr=None)
    assert {c.seq_len for c in A.plan("quick", "cpu", seq_lens=[1024])} == {1024}


@pytest.mark.slow
def test_profiles_fit_their_documented_budgets_by_the_estimate():
    """Upper estimates (step caps; the criterion stops most trainings earlier): the GPU standard grid at
    the published sizes with 3 seeds within 7 hours, the CPU standard grid (5 seeds) within 7 hours of one
    core (results/README.md; the committed run used two processes), quick within 9 minutes."""
    total = sum(s.estimate(s.plan("standard", "cuda")).seconds for s in (A, long_range))
    assert total < 7 * 3600
    cpu = sum(s.estimate(s.plan("standard", "cpu")).seconds for s in (A, long_range))
    assert cpu < 7 * 3600
    quick = sum(s.estimate(s.plan("quick", "cpu")).seconds for s in (A, long_range))
    # 5 minutes before issue 14's seven variants (about 24 s each in quick), 8 before the correctness
    # checks (issue 21: about 420 more exactness cases) and mamba-lti
    assert quick < 9 * 60


# --- CUDA twins of the CPU paths (skipped without a GPU) -------------------------------------------

@pytest.mark.cuda
def test_cuda_bf16_evaluation_matches_cpu_float32():
    """The same weights, evaluated under CUDA bf16 autocast and on the CPU in float32."""
    case = tiny_mqar(max_steps=200, time_budget_s=600, n_test=128)
    trained, _ = A.trained_model(case, RunContext())
    data = A.cached_test_set(case.eval_task(), case.n_test, case.seed)
    cpu = lm.evaluate(trained.model, data, batch_size=64, device="cpu", dtype=torch.float32)
    gpu = lm.evaluate(trained.model.to("cuda"), data, batch_size=64, device="cuda", dtype=torch.bfloat16)
    assert abs(gpu.loss - cpu.loss) < 0.05 * cpu.loss + 1e-3
    assert abs(gpu.accuracy_tokens - cpu.accuracy_tokens) < 0.05


@pytest.mark.cuda
@pytest.mark.smoke
def test_cuda_training_runs_in_bf16_autocast():
    case = tiny_mqar(device="cuda", dtype="bfloat16", max_steps=50, n_test=64)
    row = A.run_task(case, RunContext())
    assert row["steps"] == 50 or row["stop_reason"] == "solved"
    assert all(x == x for x in row["loss_curve"]) and 0 <= row["accuracy"] <= 1
