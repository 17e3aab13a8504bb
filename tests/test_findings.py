"""The findings decided from rows with known answers: verdicts by intervals, the validation-chosen rate."""

import json

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from harness import store
from suites import findings as F

N_TEST = 200


def examples(accuracy: float, seed: int = 0, n: int = N_TEST) -> list[float]:
    """Per-example outcomes with exactly the given mean (0/1, shuffled by seed)."""
    hits = np.zeros(n)
    hits[: round(accuracy * n)] = 1.0
    return list(np.random.default_rng(seed).permutation(hits))


def row(experiment, variant, accuracy, seed=0, lr=1e-3, valid=None, steps=None, **fields):
    base = dict(experiment=experiment, status="ok", variant=variant, params="{}", task="mqar",
                train_seq_len=32, seq_len=32, kv_pairs=None, d_model=64, n_layers=2, n_heads=8,
                task_params="{}", seed=seed, lr=lr, valid_accuracy=accuracy if valid is None else valid,
                steps_to_criterion=steps, tokens_to_criterion=None if steps is None else steps * 4096,
                valid_steps=[100, 200], valid_curve=[accuracy / 2, accuracy], lr_used=lr, chance=1 / 32,
                depth=None, window=None, global_tokens=None, key_distance=None, key_position=None,
                key_len=None)
    base |= fields
    base["training_id"] = json.dumps([variant, seed, lr, base["d_model"], base["kv_pairs"],
                                      base["train_seq_len"]])
    base["example_accuracy"] = examples(accuracy, seed, fields.get("n_test", N_TEST))
    return base


def seeds(experiment, variant, accuracy, n=3, **fields):
    return [row(experiment, variant, accuracy, seed=s, **fields) for s in range(n)]


def mqar_rows(softmax=1.0, linear=(0.9, 0.2), performer=(0.8, 0.1), mamba=(0.3, 0.95)):
    rows = []
    for kv, i in ((2, 0), (8, 1)):
        rows += seeds("mqar_capacity", "vanilla", softmax, kv_pairs=kv)
        rows += seeds("mqar_capacity", "linear", linear[i], kv_pairs=kv)
        rows += seeds("mqar_capacity", "performer", performer[i], kv_pairs=kv)
        rows += seeds("mqar_capacity", "mamba", 0.9 if kv == 2 else mamba[0], kv_pairs=kv)
    rows += seeds("mqar_capacity", "mamba", mamba[1], kv_pairs=8, d_model=256)
    return rows


def test_mqar_reproduced_when_intervals_separate_as_claimed():
    f = F.check_claims(pd.DataFrame(mqar_rows()))["mqar"]
    assert f.verdict == "reproduced", f.summary
    assert [c.holds for c in f.checks] == [True, True, True, True]
    configs = {(r["variant"], r["d_model"], r["kv_pairs"]) for r in f.table}
    assert configs >= {("mamba", 256, 8), ("linear", 64, 2)}
    lines = next(c for c in f.charts if c.kind == "lines")
    assert {s["name"] for s in lines.series} == {"vanilla d=64", "linear d=64", "performer d=64",
                                                 "mamba d=64", "mamba d=256"}


def test_mqar_not_reproduced_when_softmax_fails_and_inconclusive_when_intervals_overlap():
    failing = F.check_claims(pd.DataFrame(mqar_rows(softmax=0.5)))["mqar"]
    assert failing.verdict == "not reproduced" and failing.checks[0].holds is False
    close = F.check_claims(pd.DataFrame(mqar_rows(softmax=0.95, linear=(0.95, 0.94))))["mqar"]  # 0.01 apart
    linear = next(c for c in close.checks if c.text.startswith("linear"))
    assert linear.holds is None and close.verdict == "inconclusive"


def test_the_learning_rate_is_chosen_on_validation_not_on_test():
    """At seed 0 the rate 1e-2 has the better test accuracy but the worse validation: 1e-3 is kept."""
    rows = []
    for kv in (2, 8):
        rows.append(row("mqar_capacity", "vanilla", 0.95, lr=1e-3, valid=0.99, steps=300, kv_pairs=kv))
        rows.append(row("mqar_capacity", "vanilla", 1.0, lr=1e-2, valid=0.5, kv_pairs=kv))
        rows += [row("mqar_capacity", "vanilla", 0.95, seed=s, lr=np.nan, kv_pairs=kv) for s in (1, 2)]
    chosen = F.experiment_rows(pd.DataFrame(rows), "mqar_capacity")
    assert len(chosen) == 6 and set(chosen[chosen.seed == 0].lr) == {1e-3}


def test_selective_copying_induction_passkey_listops():
    rows = seeds("selective_copying", "mamba", 1.0, task="selective_copy", train_seq_len=64, seq_len=64)
    rows += seeds("selective_copying", "vanilla", 0.6, task="selective_copy", train_seq_len=64, seq_len=64)
    for n, acc_m, acc_s in ((64, 1.0, 1.0), (256, 1.0, 0.08), (1024, 0.99, 0.05)):
        fields = dict(task="induction", seq_len=n, train_seq_len=64, chance=1 / 15, n_test=400)
        rows += seeds("induction_extrapolation", "mamba", acc_m, **fields)
        rows += seeds("induction_extrapolation", "vanilla", acc_s, **fields)
    for depth, distance, acc in ((1.0, 3, 1.0), (0.5, 60, 0.0), (0.0, 120, 0.0)):
        fields = dict(task="passkey", seq_len=128, train_seq_len=128, depth=depth, key_distance=distance,
                      key_position=128 - distance, key_len=2, chance=0.01)
        rows += seeds("passkey_window", "longformer-banded", acc, window=16, global_tokens=0, **fields)
        rows += seeds("passkey_window", "vanilla", 1.0, **fields)
    for variant in ("vanilla", "linear", "mamba"):
        rows += seeds("listops_lra", variant, 0.40, task="listops", n_test=2000)
    found = F.check_claims(pd.DataFrame(rows))
    assert found["selective_copying"].verdict == "reproduced"
    assert found["induction"].verdict == "reproduced", found["induction"].summary
    assert found["passkey"].verdict == "reproduced", found["passkey"].summary
    assert found["listops"].verdict == "reproduced", found["listops"].summary
    assert found["mqar"].verdict == "no data" and found["mqar"].reproduced is None
    (heatmap,) = [c for c in found["passkey"].charts if c.kind == "heatmap"]
    assert len(heatmap.series) == 2 and len(heatmap.series[0]["points"]) == 3


def test_listops_far_apart_is_not_reproduced():
    rows = seeds("listops_lra", "vanilla", 0.60, task="listops", n_test=2000)
    rows += seeds("listops_lra", "linear", 0.20, task="listops", n_test=2000)
    found = F.check_claims(pd.DataFrame(rows))["listops"]
    assert found.verdict == "not reproduced"
    assert found.charts[0].published["vanilla"] == ["LRA Transformer", pytest.approx(0.3637)]


def test_softmax_that_extrapolates_fails_the_induction_finding():
    rows = []
    for n in (64, 512):
        for variant in ("mamba", "vanilla"):
            rows += seeds("induction_extrapolation", variant, 1.0, task="induction", seq_len=n,
                          train_seq_len=64)
    found = F.check_claims(pd.DataFrame(rows))["induction"]
    assert found.verdict == "not reproduced"


def test_summarize_writes_the_findings_for_the_report(tmp_path):
    run = store.RunStore(tmp_path)
    for i, r in enumerate(mqar_rows()):
        run.write({"case_id": f"case{i}", "suite": "accuracy", "device": "cpu", "dtype": "float32", **r})
    console = Console(record=True, width=200)
    F.summarize(tmp_path, console)
    written = json.loads((tmp_path / F.FINDINGS_FILE).read_text())
    assert written["mqar"]["verdict"] == "reproduced" and written["listops"]["verdict"] == "no data"
    assert written["mqar"]["charts"][0]["series"][0]["points"][0].keys() >= {"x", "mean", "low", "high"}
    assert "reproduced: MQAR" in console.export_text()


@pytest.mark.parametrize("name", list(F.EXPERIMENTS))
def test_every_finding_names_its_experiment(name):
    assert F.check_claims(pd.DataFrame())[name].experiment == F.EXPERIMENTS[name]
