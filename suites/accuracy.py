"""Accuracy suite: how exact each variant is (Part A), and what a small model built on it learns (Part B).

Part A (task "exactness", no training) is suites.exactness: every variant and dtype through the checks
of harness.contract, each row judged against its dtype's tolerance (the correctness gate), with the
approximation error of the approximations measured apart.

Part B (learned tasks): MQAR, selective copying, induction heads, passkey retrieval and ListOps, one
small model per (task, variant, config, seed, learning rate), trained until its validation accuracy
reaches a criterion (or a step or time cap), then evaluated on a test set it never saw (what each
profile trains: suites.grids). The long-range suite (suites.long_range) runs the same cases swept over
sequence length. `suites.findings` decides the published findings from the rows, with intervals.

A case without a learning rate trains at the rate its sweep chose (suites.learning_rate), reading the
sweep's rows through its RunContext (`needs` declares them); the worker's context keeps the last trained
model for the evaluations planned after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator

from harness import compiling, registry
from harness.config import ADDED_LATER, Case
from harness.context import RunContext
from harness.registry import as_dtype, dtype_name
from suites import estimate as cost_model
from suites import exactness, findings, grids
from suites import model as lm
from suites import recipes as recipe_book
from suites.exactness import ExactnessCase
from suites.findings import EXPERIMENTS
from suites.grids import TaskSpec, variant_params
from suites.learning_rate import SWEEP_SEED, choose_lr
from suites.model import eval_batch_size
from suites.tasks import Task, held_out_set, train_batches, validation_set
from suites.tasks.factory import make_task
from suites.tasks.passkey import Passkey

# Accuracies and errors, not speeds: a run may resume on another CPU (or GPU) model, each row naming its
# machine (a training its time budget stopped says so in stop_reason: that one depends on the speed).
MACHINE_BOUND = False
TIMEOUT_S = 1800.0  # twice a CPU training's time budget (900 s): one its budget stops still gets evaluated
LEARNED_OPTIONS = ("seeds", "findings", "criterion")  # plan's learned-task options (--seeds, --finding, ...)
OPTIONS = (*LEARNED_OPTIONS, "compiled")  # and --compile: Part A's compiled series
TASKS = ("mqar", "selective_copy", "induction", "passkey", "listops")
CLASSIFICATION_TASKS = ("listops",)  # posed as LRA poses ListOps: a bidirectional encoder and a classifier
MAX_SEEDS = 100  # more would plan millions of trainings: a typo, not an experiment


# --- cases ----------------------------------------------------------------------------------------

class AccuracyCase(Case):
    suite: Literal["accuracy", "long-range"] = "accuracy"
    task: str
    seed: int = Field(0, ge=0)


class TaskCase(AccuracyCase):
    """Part B: train a small model on a task, then evaluate it at `seq_len` (and passkey `depth`).

    Cases that differ only in the evaluation (seq_len, depth, n_test) share one trained model. `lr` None
    trains at the rate of `lrs` whose run at seed SWEEP_SEED did best on validation (`chosen_lr`): the
    cases of those runs are its `sweep_cases`.
    """

    task: Literal["mqar", "selective_copy", "induction", "passkey", "listops"]
    seq_len: int = Field(gt=0)  # evaluation length
    train_seq_len: int = Field(gt=0)
    kv_pairs: int | None = Field(None, gt=0)  # mqar
    depth: float | None = Field(None, ge=0.0, le=1.0)  # passkey evaluation depth
    task_params: dict[str, Any] = {}  # the task generator's other options (vocab, n_memorize, ...)
    d_model: int = Field(gt=0)
    n_layers: int = Field(2, gt=0)
    n_heads: int = Field(1, gt=0)
    mlp_width: int | None = Field(None, gt=0)  # None: matched to the attention block's parameters
    rope: bool | None = None  # None: rotary embeddings for attention mixers, none for mamba
    short_conv: int = Field(0, ge=0)  # taps of the depthwise causal convolution before each mixer, 0: none
    lr: float | None = Field(gt=0)  # None: the best of `lrs` on validation
    lrs: tuple[float, ...] = ()  # the learning-rate sweep this case belongs to
    batch_size: int = Field(gt=0)
    max_steps: int = Field(gt=0)
    time_budget_s: float = Field(gt=0)
    weight_decay: float = Field(0.1, ge=0)
    train_pool: int | None = Field(None, gt=0)  # None: fresh examples every step; n: a fixed training set
    criterion: float | None = Field(None, gt=0, le=1)  # validation accuracy that ends training
    # ... once reached at this many validations in a row (added after the first committed rows)
    criterion_holds: Annotated[int, ADDED_LATER] = Field(1, gt=0)
    validate_every: int = Field(100, gt=0)
    n_valid: int = Field(256, gt=0)
    n_test: int = Field(256, gt=0)
    experiment: str | None = None  # the finding's experiment (suites.grids), None outside one

    @model_validator(mode="before")
    @classmethod
    def _derived_model_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "variant" in data and "d_model" in data:
            data = dict(data)
            registry.get(data["variant"])  # a clear error for an unknown name
            if data.get("rope") is None:
                data["rope"] = lm.uses_rope(data["variant"])
            if data.get("mlp_width") is None:
                data["mlp_width"] = lm.mlp_width_for(data["variant"], data["d_model"], data.get("n_heads", 1),
                                                     data.get("params", {}),
                                                     causal=data.get("task") not in CLASSIFICATION_TASKS)
        return data

    @model_validator(mode="after")
    def _valid_task(self) -> TaskCase:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.rope and not lm.uses_rope(self.variant):
            raise ValueError(f"{self.variant} is not an attention mixer: it takes no rotary embeddings")
        if self.short_conv and self.task in CLASSIFICATION_TASKS:
            raise ValueError("short_conv is causal: the classification tasks take none")
        if self.lr is None and len(self.lrs) < 2:
            raise ValueError("lr None chooses from a sweep: give at least two learning rates in lrs")
        if self.lr is not None and self.lrs and self.lr not in self.lrs:
            raise ValueError(f"lr {self.lr} is not one of the sweep's learning rates {self.lrs}")
        if any(r <= 0 for r in self.lrs):
            raise ValueError("learning rates must be positive")
        self.train_task()  # the generators validate their own options
        self.eval_task()
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def causal(self) -> bool:
        """Whether the mixers run causally: language-model tasks, and classification by a variant that is
        causal only (it runs both ways, `suites.model.Bidirectional`)."""
        return self.task not in CLASSIFICATION_TASKS or not registry.get(self.variant).support.non_causal

    def train_task(self) -> Task:
        return make_task(self.task, self.train_seq_len, self.kv_pairs, None, self.task_params)

    def eval_task(self) -> Task:
        return make_task(self.task, self.seq_len, self.kv_pairs, self.depth, self.task_params)

    def sweep_cases(self) -> list[TaskCase]:
        """The cases whose rows choose this case's rate: the same case at SWEEP_SEED and each rate of
        the sweep; none when the case has a rate."""
        if self.lr is not None:
            return []
        return [self.model_copy(update={"seed": SWEEP_SEED, "lr": lr}) for lr in self.lrs]

    def training_key(self) -> str:
        """Identifies the trained model: everything but the evaluation settings."""
        return json.dumps(self.identity(exclude={"suite", "seq_len", "depth", "n_test"}), sort_keys=True)

    def training_id(self) -> str:
        """A short stable hash of training_key: the rows of one trained model share it."""
        return hashlib.sha1(self.training_key().encode()).hexdigest()[:16]

    def describe(self) -> str:
        depth = "" if self.depth is None else f" depth={self.depth:g}"
        train = "" if self.train_seq_len == self.seq_len else f" (trained {self.train_seq_len})"
        kv = "" if self.kv_pairs is None else f" kv={self.kv_pairs}"
        lr = "chosen" if self.lr is None else f"{self.lr:g}"
        return (f"{self.task} {self.variant} N={self.seq_len}{train}{kv}{depth} d={self.d_model} lr={lr} "
                f"seed={self.seed}")

    def oom_key(self):
        """A length sweep: once a length runs out of memory, longer ones of the sweep are skipped. Seeds
        and rates share the group (memory does not depend on them), which keeps the cases that choose
        their rate in one --shard part with the sweep they choose from."""
        sweep = (self.task, self.variant, self.dtype, self.d_model)
        return sweep, max(self.seq_len, self.train_seq_len)


# --- plans ----------------------------------------------------------------------------------------

def learned_dtype(name: str, device: str) -> str:
    """bf16 autocast on CUDA where the variant takes bf16 there, else float32; float32 on CPU."""
    if device == "cuda" and torch.bfloat16 in registry.get(name).support.dtypes.get("cuda", ()):
        return "bfloat16"
    return "float32"


def seeds_and_rates(spec: TaskSpec) -> list[tuple[int, float | None]]:
    """(seed, lr) of every training of a configuration: the sweep first, then the other seeds."""
    if spec.seeds == 1 or len(spec.lrs) == 1:
        return [(seed, lr) for seed in range(spec.seeds) for lr in spec.lrs]
    return [(SWEEP_SEED, lr) for lr in spec.lrs] + [(seed, None) for seed in range(1, spec.seeds)]


def task_cases(specs: list[TaskSpec], suite: str, device: str, names: list[str] | None,
               profile: str) -> list[TaskCase]:
    """Cases in training order: the evaluations of one trained model are consecutive (it is reused).

    names None: each spec's own variants (or the profile's learned variants where it lists none)."""
    cases = []
    for spec in specs:
        chosen = names if names is not None else list(spec.variants or default_learned(profile))
        for i, train_len in enumerate(spec.train_seq_lens):
            for d_model, name, (seed, lr) in itertools.product(spec.d_models, chosen, seeds_and_rates(spec)):
                params = {**variant_params(profile, name), **spec.variant_params.get(name, {})}
                trained = dict(
                    suite=suite, variant=name, device=device, dtype=learned_dtype(name, device),
                    params=params, task=spec.task, train_seq_len=train_len,
                    kv_pairs=spec.kv_pairs[i] if spec.kv_pairs else None,
                    task_params=spec.task_params, d_model=d_model, n_layers=spec.n_layers,
                    n_heads=spec.n_heads or max(1, d_model // 32), short_conv=spec.short_conv, lr=lr,
                    lrs=spec.lrs if len(spec.lrs) > 1 and spec.seeds > 1 else (), seed=seed,
                    batch_size=spec.batch_for(train_len), max_steps=spec.max_steps,
                    time_budget_s=spec.time_budget_s, train_pool=spec.train_pool, criterion=spec.criterion,
                    criterion_holds=spec.criterion_holds, validate_every=spec.validate_every,
                    n_valid=spec.n_valid, n_test=spec.n_test,
                    experiment=spec.experiment,
                )
                evaluations = itertools.product(spec.eval_lens or (train_len,), spec.depths or (None,))
                for seq_len, depth in evaluations:
                    cases.append(TaskCase(**trained, seq_len=seq_len, depth=depth))
    return cases


def check_profile(profile: str) -> None:
    if profile not in ("quick", "standard", "full"):
        raise ValueError(f"unknown profile {profile!r}; use quick, standard or full")


def selected_variants(names: list[str] | None) -> list[str]:
    for name in names or []:
        registry.get(name)
    return list(names) if names else registry.names()


def default_learned(profile: str) -> list[str]:
    """Who trains where a configuration names nobody: in the standard profile one variant per family."""
    return list(grids.STANDARD_LEARNED) if profile == "standard" else registry.names()


def learned_variants(names: list[str] | None) -> list[str] | None:
    """The variants asked for (checked), or None: every configuration's own list."""
    return selected_variants(names) if names else None


def filtered(cases: list, seq_lens: list[int] | None, dtypes: list[str] | None) -> list:
    if dtypes:
        wanted = {dtype_name(as_dtype(d)) for d in dtypes}  # ValueError names the valid dtypes
        cases = [c for c in cases if c.dtype in wanted]
    if seq_lens:
        cases = [c for c in cases if c.seq_len in set(seq_lens)]
    return cases


def chosen_specs(suite: str, profile: str, device: str, seeds: int | None = None,
                 findings: list[str] | None = None, criterion: float | None = None) -> list[TaskSpec]:
    """The profile's learned-task configurations, with the command line's overrides: `seeds` per
    configuration, only the experiments of `findings`, the validation `criterion` (in (0, 1])."""
    if seeds is not None and not 0 <= seeds <= MAX_SEEDS:
        raise ValueError(f"--seeds must be between 0 and {MAX_SEEDS}, got {seeds}")
    if seeds == 0:  # no trainings: the accuracy suite's exactness checks alone
        return []
    if criterion is not None and not 0 < criterion <= 1:
        raise ValueError(f"--criterion must be in (0, 1], got {criterion:g}")
    for name in findings or []:
        if name not in EXPERIMENTS:
            raise ValueError(f"unknown finding {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    specs = grids.learned_specs(suite, profile, device)
    if findings:
        specs = [s for s in specs if s.experiment in {EXPERIMENTS[f] for f in findings}]
    overrides = {k: v for k, v in dict(seeds=seeds, criterion=criterion).items() if v is not None}
    return [dataclasses.replace(s, **overrides) for s in specs]


def plan(profile: str, device: str, variants: list[str] | None = None, seq_lens: list[int] | None = None,
         dtypes: list[str] | None = None, seeds: int | None = None, findings: list[str] | None = None,
         criterion: float | None = None, compiled: bool = False) -> list[ExactnessCase | AccuracyCase]:
    """Part A and Part B of a profile; `findings` keeps only those experiments (and no Part A); `compiled`
    adds Part A's compiled series (suites.exactness.compiled_cases)."""
    check_profile(profile)
    specs = chosen_specs("accuracy", profile, device, seeds, findings, criterion)
    names = selected_variants(variants)
    if profile == "standard" and not variants:
        names = [n for n in names if n not in grids.STANDARD_EXACTNESS_SKIPPED]
    cases = [] if findings else exactness.cases(profile, device, names, compiled)
    cases += task_cases(specs, "accuracy", device, learned_variants(variants), profile)
    return filtered(cases, seq_lens, dtypes)


# --- Part B: learned tasks ------------------------------------------------------------------------

@dataclass
class Trained:
    key: str
    model: lm.Backbone
    result: lm.TrainResult
    lr: float  # the learning rate it trained at (the sweep's choice when the case has none)
    data_s: float  # building the training data (a fixed pool) before training


TRAINED = "accuracy.trained"  # the context's cache holds one model: its evaluations are planned together


@contextlib.contextmanager
def cpu_settings(device: str):
    """On CPU: one thread (tiny models gain nothing from more; robust on shared runners), deterministic
    algorithms, so a seed gives the same model, and subnormal floats flushed to zero (mamba's decays
    underflow through them, which costs 10-100x per operation on x86)."""
    if device != "cpu":
        yield
        return
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        if flushed:
            torch.set_flush_denormal(False)


def model_for(case: TaskCase) -> lm.Backbone:
    """The case's model, freshly initialized from the global random state, on the default device."""
    task, shape = case.train_task(), (case.d_model, case.n_layers, case.n_heads, case.mlp_width)
    if case.task in CLASSIFICATION_TASKS:
        return lm.Classifier(case.variant, task.vocab_size, *shape, case.params, rope=case.rope,
                             n_classes=task.n_classes, pad_token=task.pad_token)
    return lm.LanguageModel(case.variant, task.vocab_size, *shape, case.params, rope=case.rope,
                            short_conv=case.short_conv)


def build_model(case: TaskCase) -> lm.Backbone:
    torch.manual_seed(case.seed)
    return model_for(case).to(case.device)


def needs(case: AccuracyCase) -> list[str]:
    """The cases whose rows a case reads through its context (harness.suite `needs`): its sweep's."""
    return [c.case_id for c in case.sweep_cases()] if isinstance(case, TaskCase) else []


def sweep_rows(case: TaskCase, context: RunContext) -> list[dict]:
    """The rows of the sweep case `case` chooses its rate from (`TaskCase.sweep_cases`), from its run."""
    sweep = case.sweep_cases()
    found = context.rows(c.case_id for c in sweep)
    rows = []
    for lr, sweep_case in zip(case.lrs, sweep, strict=True):
        row = found.get(sweep_case.case_id)
        if row is None or row.get("status") != "ok":
            raise RuntimeError(f"the learning-rate sweep has no ok row for lr={lr:g} at seed {SWEEP_SEED} "
                               f"({sweep_case.describe()}): run the whole plan")
        rows.append(row)
    return rows


def chosen_lr(case: TaskCase, context: RunContext) -> float:
    if case.lr is not None:
        return case.lr
    runs = [(float(r["lr"]), float(r["valid_accuracy"]),
             None if r.get("steps_to_criterion") is None else int(r["steps_to_criterion"]))
            for r in sweep_rows(case, context)]
    return choose_lr(runs)


@functools.lru_cache(maxsize=4)
def cached_set(task: Task, n: int, seed: int, split: str):
    return held_out_set(task, n, seed) if split == "test" else validation_set(task, n, seed)


def trained_model(case: TaskCase, context: RunContext) -> tuple[Trained, bool]:
    """The model of the case's training configuration: trained now, or reused from the previous case."""
    key = case.training_key()
    last = context.cache.get(TRAINED)
    if last is not None and last.key == key:
        return last, False
    context.cache.pop(TRAINED, None)  # freed before the next model is built
    lr = chosen_lr(case, context)
    model = build_model(case)
    started = time.perf_counter()
    batches = train_batches(case.train_task(), case.batch_size, case.seed, pool=case.train_pool)
    valid = cached_set(case.train_task(), case.n_valid, case.seed, "valid")
    data_s = time.perf_counter() - started

    def accuracy() -> float:
        return lm.evaluate(model, valid, batch_size=eval_batch_size(case, case.train_seq_len),
                           device=case.device, dtype=case.torch_dtype).accuracy_tokens

    validation = lm.Validation(accuracy, case.validate_every, case.criterion, case.criterion_holds)
    result = lm.train(model, batches, lr=lr, max_steps=case.max_steps, time_budget_s=case.time_budget_s,
                      weight_decay=case.weight_decay, device=case.device, dtype=case.torch_dtype,
                      validation=validation)
    trained = context.cache[TRAINED] = Trained(key, model, result, lr, data_s)
    return trained, True


def task_columns(case: TaskCase) -> dict:
    """Task facts the report and the findings need beside the accuracy."""
    task, v = case.eval_task(), registry.get(case.variant)
    effective = {**v.defaults, **case.params}
    row = {"vocab_size": task.vocab_size, "window": effective.get("window"),
           "global_tokens": effective.get("global_tokens"), "chance": task.chance,
           "variant_params": json.dumps(effective, sort_keys=True, default=str)}
    if isinstance(task, Passkey) and task.depth is not None:
        row |= {"key_distance": task.key_distance(task.depth), "key_len": task.key_len,
                "key_position": int(task.key_start(torch.tensor(task.depth))) + 1}  # the first digit
    return row


def run_task(case: TaskCase, context: RunContext) -> dict:
    with cpu_settings(case.device):
        trained, trained_here = trained_model(case, context)
        started = time.perf_counter()
        data = cached_set(case.eval_task(), case.n_test, case.seed, "test")
        data_s = time.perf_counter() - started
        evaluation = lm.evaluate(trained.model, data, batch_size=eval_batch_size(case), device=case.device,
                                 dtype=case.torch_dtype)
    r, model = trained.result, trained.model
    exact_match = case.task == "passkey"  # passkey is scored by the whole key
    official = evaluation.accuracy_sequences if exact_match else evaluation.accuracy_tokens
    per_example = [float(x == 1.0) for x in evaluation.per_example] if exact_match else evaluation.per_example
    tokens_per_step = case.batch_size * case.train_seq_len
    return {
        "accuracy": official, "accuracy_tokens": evaluation.accuracy_tokens,
        "accuracy_sequences": evaluation.accuracy_sequences, "test_loss": evaluation.loss,
        "example_accuracy": per_example, "lr_used": trained.lr, "training_id": case.training_id(),
        "valid_accuracy": r.valid_accuracy, "valid_steps": [s for s, _ in r.valid_curve],
        "valid_curve": [a for _, a in r.valid_curve], "steps_to_criterion": r.steps_to_criterion,
        "tokens_to_criterion": r.steps_to_criterion and r.steps_to_criterion * tokens_per_step,
        "n_params": lm.count_parameters(model), "n_params_non_embedding": model.non_embedding_parameters(),
        "steps": r.steps, "wall_s": r.wall_s, "warmup_s": r.warmup_s, "tokens_seen": r.tokens_seen,
        "loss_curve": r.loss_curve, "curve_every": r.curve_every, "final_loss": r.final_loss,
        "train_accuracy": r.train_accuracy, "stop_reason": r.stop_reason,
        "trained_in_case": trained_here, "train_data_s": trained.data_s, "test_data_s": data_s,
        "eval_wall_s": evaluation.wall_s, "eval_batch_size": eval_batch_size(case),
        "threads": 1 if case.device == "cpu" else None,
        **task_columns(case),
    }


def run_case(case: AccuracyCase, context: RunContext) -> dict:
    compiled = getattr(case, "compiled", False)
    compiling.allow_recompiles(case.device, reset=compiled, compiled=compiled)
    if isinstance(case, ExactnessCase):
        with torch.no_grad():
            return exactness.run(case)
    return run_task(case, context)


summarize = findings.summarize
estimate = cost_model.estimate  # the plan's estimate, compiling included (`attnbench run --estimate`)
case_cost = cost_model.case_cost
recipes = recipe_book.recipes  # each experiment's recipe, recorded before the first case
