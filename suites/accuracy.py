"""Accuracy suite: how exact each variant is (Part A), and what a small model built on it learns (Part B).

Part A (task "exactness", no training): every attention variant and dtype against float64 softmax
attention (under the variant's own mask for masked families) on random, peaked (large logits), long and
nearly-duplicate-key inputs; linear and performer against softmax as N and nb_features grow; masked
families also report how far their pattern is from full attention. Mamba has no attention: its
selective scan is held to the float64 recurrence instead.

Part B (learned tasks): MQAR, selective copying, induction heads, passkey retrieval and ListOps, one
small language model per (task, variant, config, learning rate), trained under a step and a time
budget, evaluated on held-out data. The long-range suite (suites.long_range) runs the same cases
swept over sequence length. `check_claims` tests the published findings against a results frame.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field, model_validator

from harness import compiling, registry
from harness.attention import causal_mask, softmax_attention
from harness.config import Case
from harness.registry import as_dtype, dtype_name
from harness.runner import check_finite
from suites import model as lm
from suites.tasks import TEST_BUCKETS, Task, held_out_set, train_batches
from suites.tasks.induction import Induction
from suites.tasks.listops import ListOps
from suites.tasks.mqar import MQAR
from suites.tasks.passkey import Passkey
from suites.tasks.selective_copy import SelectiveCopy

TIMEOUT_S = 900.0
TASKS = ("mqar", "selective_copy", "induction", "passkey", "listops")
INPUT_KINDS = ("random", "peaked", "long", "near_duplicate")
DTYPES = ("float64", "float32", "float16", "bfloat16")
PEAK_SCALE = 4.0  # "peaked": q and k times 4, so logits have a standard deviation of about 16
DUPLICATE_KEYS, DUPLICATE_NOISE = 4, 1e-3  # "near_duplicate": keys are 4 vectors plus 1e-3 noise
EVAL_TOKENS = {"cpu": 8192, "cuda": 32768}  # tokens per evaluation batch


# --- cases ----------------------------------------------------------------------------------------

class AccuracyCase(Case):
    suite: Literal["accuracy", "long-range"] = "accuracy"
    task: str
    seed: int = 0


class ExactnessCase(AccuracyCase):
    """Part A: one variant, dtype and input against the float64 reference."""

    task: Literal["exactness"] = "exactness"
    input_kind: Literal["random", "peaked", "long", "near_duplicate"]
    seq_len: int = Field(gt=0)
    head_dim: int = Field(64, gt=0)
    n_heads: int = Field(2, gt=0)
    batch: int = Field(1, gt=0)
    causal: bool = True

    def describe(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.items()))
        return f"exactness {self.variant} {self.dtype} {self.input_kind} N={self.seq_len}" + extra

    def oom_key(self):
        return (self.variant, self.dtype, self.causal, json.dumps(self.params, sort_keys=True)), self.seq_len


class TaskCase(AccuracyCase):
    """Part B: train a small model on a task, then evaluate it at `seq_len` (and passkey `depth`).

    Cases that differ only in the evaluation (seq_len, depth, n_test) share one trained model.
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
    lr: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    max_steps: int = Field(gt=0)
    time_budget_s: float = Field(gt=0)
    weight_decay: float = Field(0.1, ge=0)
    train_pool: int | None = Field(None, gt=0)  # None: fresh examples every step; n: a fixed training set
    n_test: int = Field(256, gt=0)

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
                                                     data.get("params", {}))
        return data

    @model_validator(mode="after")
    def _valid_task(self) -> TaskCase:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.rope and not lm.uses_rope(self.variant):
            raise ValueError(f"{self.variant} is not an attention mixer: it takes no rotary embeddings")
        self.train_task()  # the generators validate their own options
        self.eval_task()
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def causal(self) -> bool:
        return True

    def train_task(self) -> Task:
        return make_task(self.task, self.train_seq_len, self.kv_pairs, None, self.task_params)

    def eval_task(self) -> Task:
        return make_task(self.task, self.seq_len, self.kv_pairs, self.depth, self.task_params)

    def training_key(self) -> str:
        """Identifies the trained model: everything but the evaluation settings."""
        fields = self.model_dump(mode="json", exclude={"suite", "seq_len", "depth", "n_test"})
        return json.dumps(fields, sort_keys=True)

    def describe(self) -> str:
        depth = "" if self.depth is None else f" depth={self.depth:g}"
        train = "" if self.train_seq_len == self.seq_len else f" (trained {self.train_seq_len})"
        return f"{self.task} {self.variant} N={self.seq_len}{train}{depth} d={self.d_model} lr={self.lr:g}"

    def oom_key(self):
        """A length sweep: once a length runs out of memory, longer ones of the sweep are skipped."""
        sweep = (self.task, self.variant, self.dtype, self.d_model, self.lr)
        return sweep, max(self.seq_len, self.train_seq_len)


def make_task(name: str, seq_len: int, kv_pairs: int | None, depth: float | None, options: dict) -> Task:
    if (kv_pairs is None) == (name == "mqar"):
        raise ValueError("kv_pairs is an MQAR option, which MQAR needs")
    if depth is not None and name != "passkey":
        raise ValueError(f"depth is a passkey option, not one of {name}")
    if name == "mqar":
        return MQAR(seq_len=seq_len, kv_pairs=kv_pairs, **options)
    if name == "passkey":
        return Passkey(seq_len=seq_len, depth=depth, **options)
    factories = {"selective_copy": SelectiveCopy, "induction": Induction, "listops": ListOps}
    return factories[name](seq_len=seq_len, **options)


# --- profiles -------------------------------------------------------------------------------------

# Learned tasks in the standard profile: the variants of the published findings. Flash computes vanilla's
# function; longformer-banded computes longformer's without FlexAttention's compilation, which the
# 20 minutes cannot afford for every training shape; the sparse family trains in quick and full.
STANDARD_LEARNED = ("vanilla", "longformer-banded", "linear", "performer", "mamba")
# Left out of the standard profile's exactness by default (still run when named, and in quick and full):
# each sinks variant costs about 90 s of FlexAttention compilations there, which the 20 minutes cannot
# afford (issue 14; their GPU parity is `pytest -m cuda` in tests/test_sinks.py).
STANDARD_EXACTNESS_SKIPPED = ("swa-sinks", "swa-learned-sinks")


def variant_params(profile: str, name: str) -> dict:
    """The quick profile runs each variant at its small_params (patterns still sparse at short N)."""
    return dict(registry.get(name).small_params) if profile == "quick" else {}


def learned_dtype(name: str, device: str) -> str:
    """bf16 autocast on CUDA where the variant takes bf16 there, else float32; float32 on CPU."""
    if device == "cuda" and torch.bfloat16 in registry.get(name).support.dtypes.get("cuda", ()):
        return "bfloat16"
    return "float32"


@dataclass(frozen=True)
class TaskSpec:
    """A learned-task configuration of a profile: trained at each train_seq_len, for each d_model and
    lr, then evaluated at each of eval_lens (default: the training length) and passkey depths."""

    task: str
    train_seq_lens: tuple[int, ...]
    d_models: tuple[int, ...]
    lrs: tuple[float, ...]
    batch_size: int  # sequences per batch, or with batch_tokens=True tokens per batch (a constant budget)
    max_steps: int
    time_budget_s: float
    kv_pairs: tuple[int, ...] = ()  # mqar: one per train_seq_len
    eval_lens: tuple[int, ...] | None = None
    depths: tuple[float, ...] | None = None
    task_params: dict = field(default_factory=dict)
    n_heads: int | None = None  # None: d_model // 32 (head_dim 32), at least 1
    n_layers: int = 2
    n_test: int = 256
    train_pool: int | None = None
    batch_tokens: bool = False

    def batch_for(self, train_len: int) -> int:
        return max(1, self.batch_size // train_len) if self.batch_tokens else self.batch_size


def task_cases(specs: list[TaskSpec], suite: str, device: str, names: list[str],
               profile: str) -> list[TaskCase]:
    """Cases in training order: the evaluations of one trained model are consecutive (it is reused)."""
    cases = []
    for spec in specs:
        for i, train_len in enumerate(spec.train_seq_lens):
            for d_model, name, lr in itertools.product(spec.d_models, names, spec.lrs):
                trained = dict(
                    suite=suite, variant=name, device=device, dtype=learned_dtype(name, device),
                    params=variant_params(profile, name), task=spec.task, train_seq_len=train_len,
                    kv_pairs=spec.kv_pairs[i] if spec.kv_pairs else None, task_params=spec.task_params,
                    d_model=d_model, n_layers=spec.n_layers, n_heads=spec.n_heads or max(1, d_model // 32),
                    lr=lr, batch_size=spec.batch_for(train_len), max_steps=spec.max_steps,
                    time_budget_s=spec.time_budget_s, train_pool=spec.train_pool, n_test=spec.n_test,
                )
                evaluations = itertools.product(spec.eval_lens or (train_len,), spec.depths or (None,))
                for seq_len, depth in evaluations:
                    cases.append(TaskCase(**trained, seq_len=seq_len, depth=depth))
    return cases


QUICK_TASKS = [
    # The smallest MQAR: 2 of 3 keys, 2 of 4 values, 8 tokens. Vanilla solves it in about 500 steps (some
    # 6 s on one CPU core); the other tasks get a glimpse of training only.
    TaskSpec("mqar", (8,), (32,), (3e-3,), 128, 2000, 10.0, kv_pairs=(2,), task_params={"vocab": 8},
             n_heads=4),
    TaskSpec("selective_copy", (32,), (32,), (3e-3,), 32, 200, 1.0, task_params={"n_memorize": 4}, n_heads=4),
    TaskSpec("induction", (32,), (32,), (3e-3,), 32, 200, 1.0, n_heads=4),
    TaskSpec("passkey", (32,), (32,), (3e-3,), 32, 200, 1.0, depths=(0.0, 1.0), task_params={"key_len": 2},
             n_test=64, n_heads=4),
    TaskSpec("listops", (64,), (32,), (3e-3,), 32, 200, 1.0, task_params={"min_length": 8}, train_pool=512,
             n_test=128, n_heads=4),
]
# Standard: budgets sized to fit the 20-minute estimate (see estimated_seconds); batches in tokens.
STANDARD_TASKS = [
    TaskSpec("mqar", (64, 128, 256, 512), (64, 128, 256), (1e-3, 3e-3), 32768, 5000, 2.0,
             kv_pairs=(4, 8, 16, 64), batch_tokens=True),
    TaskSpec("selective_copy", (1024,), (64,), (1e-3, 3e-3), 32768, 5000, 3.0, batch_tokens=True),
    TaskSpec("induction", (256,), (64,), (1e-3, 3e-3), 32768, 5000, 3.0,
             eval_lens=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384), n_test=128, batch_tokens=True),
    TaskSpec("passkey", (1024,), (64,), (1e-3, 3e-3), 32768, 5000, 3.0, depths=(0.0, 0.25, 0.5, 0.75, 1.0),
             n_test=128, batch_tokens=True),
    TaskSpec("listops", (512,), (64,), (1e-3, 3e-3), 16384, 5000, 3.0, task_params={"min_length": 128},
             train_pool=4096, batch_tokens=True),
]
FULL_TASKS = [
    TaskSpec("mqar", (64, 128, 256, 512), (64, 128, 256, 512), (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), 65536, 20000,
             120.0, kv_pairs=(4, 8, 16, 64), batch_tokens=True),
    TaskSpec("selective_copy", (4096,), (64,), (3e-4, 1e-3, 3e-3), 131072, 20000, 600.0, batch_tokens=True),
    TaskSpec("induction", (256,), (64,), (3e-4, 1e-3, 3e-3), 32768, 20000, 300.0,
             eval_lens=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536), n_test=256,
             batch_tokens=True),
    TaskSpec("passkey", (4096,), (64,), (3e-4, 1e-3, 3e-3), 131072, 20000, 600.0,
             depths=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), batch_tokens=True),
    TaskSpec("listops", (2000,), (128,), (3e-4, 1e-3, 3e-3), 64000, 50000, 1200.0,
             task_params={"min_length": 500}, train_pool=96000, n_test=2000, n_layers=4, batch_tokens=True),
]
LEARNED = {"quick": QUICK_TASKS, "standard": STANDARD_TASKS, "full": FULL_TASKS}


@dataclass(frozen=True)
class ExactnessGrid:
    """Part A of a profile: (input_kind, seq_len) points at every dtype, causal (and non-causal too for
    random inputs where `non_causal`), plus float32 sweeps over N and performer's nb_features."""

    points: tuple[tuple[str, int], ...]
    n_sweep: tuple[int, ...]
    nb_features_sweep: tuple[int, ...]
    nb_features_len: int
    non_causal: bool = True


EXACTNESS = {
    "quick": ExactnessGrid((("random", 128), ("peaked", 128), ("near_duplicate", 128), ("long", 1024)),
                           (64, 256), (16, 64, 256), 256),
    # Causal only: each new (dtype, mask) costs FlexAttention compilations on a GPU (see estimated_seconds).
    "standard": ExactnessGrid((("random", 1024), ("peaked", 1024), ("near_duplicate", 1024), ("long", 8192)),
                              (256, 4096, 16384), (16, 64, 256, 1024), 1024, non_causal=False),
    "full": ExactnessGrid((("random", 1024), ("peaked", 1024), ("near_duplicate", 1024), ("long", 16384)),
                          (128, 256, 512, 2048, 4096, 8192, 32768),
                          (16, 32, 64, 128, 256, 512, 1024, 2048), 4096),
}


def exactness_cases(profile: str, device: str, names: list[str]) -> list[ExactnessCase]:
    grid, cases = EXACTNESS[profile], []
    for name in names:
        v, params = registry.get(name), variant_params(profile, name)
        kinds = INPUT_KINDS if v.attention_fn is not None else ("random", "long")  # a scan has no keys
        for kind, n in grid.points:
            if kind not in kinds:
                continue
            for dtype in DTYPES:
                both = kind == "random" and grid.non_causal and v.support.non_causal
                for causal in (False, True) if both else (True,):
                    cases.append(ExactnessCase(variant=name, device=device, dtype=dtype, params=params,
                                               input_kind=kind, seq_len=n, causal=causal))
        if v.attention_fn is None:
            continue
        for n in grid.n_sweep:
            cases.append(ExactnessCase(variant=name, device=device, dtype="float32", params=params,
                                       input_kind="random", seq_len=n, causal=True))
        if v.family == "performer":
            for m in grid.nb_features_sweep:
                for causal in (False, True) if grid.non_causal else (True,):
                    cases.append(ExactnessCase(variant=name, device=device, dtype="float32",
                                               params={**params, "nb_features": m}, input_kind="random",
                                               seq_len=grid.nb_features_len, causal=causal))
    return list({c.case_id: c for c in cases}.values())  # sweeps may repeat a grid point


def check_profile(profile: str) -> None:
    if profile not in LEARNED:
        raise ValueError(f"unknown profile {profile!r}; use quick, standard or full")


def selected_variants(names: list[str] | None) -> list[str]:
    for name in names or []:
        registry.get(name)
    return list(names) if names else registry.names()


def learned_variants(profile: str, names: list[str] | None) -> list[str]:
    """Who trains: every variant asked for; in the standard profile by default one per family."""
    if names:
        return selected_variants(names)
    return list(STANDARD_LEARNED) if profile == "standard" else registry.names()


def filtered(cases: list, seq_lens: list[int] | None, dtypes: list[str] | None) -> list:
    if dtypes:
        wanted = {dtype_name(as_dtype(d)) for d in dtypes}  # ValueError names the valid dtypes
        cases = [c for c in cases if c.dtype in wanted]
    if seq_lens:
        cases = [c for c in cases if c.seq_len in set(seq_lens)]
    return cases


def plan(profile: str, device: str, variants: list[str] | None = None, seq_lens: list[int] | None = None,
         dtypes: list[str] | None = None) -> list[AccuracyCase]:
    check_profile(profile)
    names = selected_variants(variants)
    if profile == "standard" and not variants:
        names = [n for n in names if n not in STANDARD_EXACTNESS_SKIPPED]
    cases = exactness_cases(profile, device, names)
    cases += task_cases(LEARNED[profile], "accuracy", device, learned_variants(profile, variants), profile)
    return filtered(cases, seq_lens, dtypes)


# --- Part A: exactness ----------------------------------------------------------------------------

def exactness_inputs(case: ExactnessCase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (batch, heads, seq, head_dim) in float64 on the case's device, deterministic by seed."""
    g = torch.Generator().manual_seed(case.seed)
    shape = (case.batch, case.n_heads, case.seq_len, case.head_dim)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    if case.input_kind == "peaked":
        q, k = q * PEAK_SCALE, k * PEAK_SCALE
    elif case.input_kind == "near_duplicate":
        base = torch.randn(*shape[:2], DUPLICATE_KEYS, shape[-1], generator=g, dtype=torch.float64)
        k = base[..., torch.arange(case.seq_len) % DUPLICATE_KEYS, :] + DUPLICATE_NOISE * k
    return q.to(case.device), k.to(case.device), v.to(case.device)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Frobenius-norm relative error; 0 when both are zero."""
    ref_norm = float(ref.norm())
    diff = float((out - ref).norm())
    return diff / ref_norm if ref_norm > 0 else diff


def error_columns(out: torch.Tensor, ref: torch.Tensor) -> dict:
    out = out.double()
    return {"max_abs_err": float((out - ref).abs().max()), "rel_err": relative_error(out, ref)}


def attention_exactness(case: ExactnessCase, v) -> dict:
    params = {**v.defaults, **case.params}
    q, k, val = exactness_inputs(case)
    n = case.seq_len
    full = softmax_attention(q, k, val, causal_mask(n, n, q.device) if case.causal else None)
    row = {"reference": "softmax", "full_attention_err": None, "impl_err": None,
           "nb_features": params.get("nb_features")}
    reference = full
    if v.mask is not None:
        mask = v.mask(n, n, causal=case.causal, n_heads=q.shape[1], **params)  # (heads,) n, n
        reference = softmax_attention(q, k, val, mask.to(q.device))
        row |= {"reference": "masked_softmax", "full_attention_err": relative_error(reference, full)}
    dt = case.torch_dtype
    out = v.attention(q.to(dt), k.to(dt), val.to(dt), causal=case.causal, **case.params)
    check_finite(case.variant, out)
    if not v.exact:  # an approximation: also against its own float64 naive twin (rounding and the fast path)
        own = v.attention_reference(q, k, val, causal=case.causal, **case.params)
        row["impl_err"] = relative_error(out.double(), own)
    return row | error_columns(out, reference)


def kernel_exactness(case: ExactnessCase, v) -> dict:
    """A mixer-only family: its kernel in this dtype against its float64 naive twin on the same inputs."""
    g = torch.Generator().manual_seed(case.seed)
    inputs = v.kernel_inputs(case.batch, case.n_heads, case.seq_len, case.head_dim, g, dtype=case.torch_dtype)
    inputs = {k: t.to(case.device) if torch.is_tensor(t) else t for k, t in inputs.items()}
    as64 = {k: t.double() if torch.is_tensor(t) else t for k, t in inputs.items()}
    reference = v.kernel_reference(**as64)
    out = v.kernel(**inputs)
    check_finite(case.variant, out)
    return {"reference": "kernel_reference", "full_attention_err": None, "impl_err": None,
            "nb_features": None, **error_columns(out, reference)}


def run_exactness(case: ExactnessCase) -> dict:
    v = registry.get(case.variant)
    with torch.no_grad():
        metrics = attention_exactness(case, v) if v.attention_fn is not None else kernel_exactness(case, v)
    return metrics


# --- Part B: learned tasks ------------------------------------------------------------------------

@dataclass
class Trained:
    key: str
    model: lm.LanguageModel
    result: lm.TrainResult
    data_s: float  # building the training data (a fixed pool) before training


_last_trained: Trained | None = None  # the worker keeps one model: its evaluations are planned together


@contextlib.contextmanager
def cpu_settings(device: str):
    """On CPU: one thread (tiny models gain nothing from more; robust on shared runners) and
    deterministic algorithms, so a seed gives the same model."""
    if device != "cpu":
        yield
        return
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def build_model(case: TaskCase) -> lm.LanguageModel:
    torch.manual_seed(case.seed)
    model = lm.LanguageModel(case.variant, case.train_task().vocab_size, case.d_model, case.n_layers,
                             case.n_heads, case.mlp_width, case.params, rope=case.rope)
    return model.to(case.device)


def trained_model(case: TaskCase) -> tuple[Trained, bool]:
    """The model of the case's training configuration: trained now, or reused from the previous case."""
    global _last_trained
    key = case.training_key()
    if _last_trained is not None and _last_trained.key == key:
        return _last_trained, False
    _last_trained = None
    model = build_model(case)
    started = time.perf_counter()
    batches = train_batches(case.train_task(), case.batch_size, case.seed, pool=case.train_pool)
    data_s = time.perf_counter() - started
    result = lm.train(model, batches, lr=case.lr, max_steps=case.max_steps, time_budget_s=case.time_budget_s,
                      weight_decay=case.weight_decay, device=case.device, dtype=case.torch_dtype)
    _last_trained = Trained(key, model, result, data_s)
    return _last_trained, True


@functools.lru_cache(maxsize=4)
def cached_test_set(task: Task, n: int, seed: int):
    return held_out_set(task, n, seed)


def eval_batch_size(case: TaskCase) -> int:
    return max(1, min(case.n_test, EVAL_TOKENS[case.device] // case.seq_len))


def task_columns(case: TaskCase) -> dict:
    """Task facts the report and the claims need beside the accuracy."""
    task, v = case.eval_task(), registry.get(case.variant)
    effective = {**v.defaults, **case.params}
    row = {"vocab_size": task.vocab_size, "window": effective.get("window"),
           "global_tokens": effective.get("global_tokens"),
           "variant_params": json.dumps(effective, sort_keys=True, default=str)}
    if isinstance(task, Passkey) and task.depth is not None:
        row |= {"key_distance": task.key_distance(task.depth), "key_len": task.key_len,
                "key_position": int(task.key_start(torch.tensor(task.depth))) + 1}  # the first digit
    return row


def run_task(case: TaskCase) -> dict:
    with cpu_settings(case.device):
        trained, trained_here = trained_model(case)
        started = time.perf_counter()
        data = cached_test_set(case.eval_task(), case.n_test, case.seed)
        data_s = time.perf_counter() - started
        evaluation = lm.evaluate(trained.model, data, batch_size=eval_batch_size(case), device=case.device,
                                 dtype=case.torch_dtype)
    r, model = trained.result, trained.model
    official = evaluation.accuracy_sequences if case.task == "passkey" else evaluation.accuracy_tokens
    return {
        "accuracy": official, "accuracy_tokens": evaluation.accuracy_tokens,
        "accuracy_sequences": evaluation.accuracy_sequences, "test_loss": evaluation.loss,
        "n_params": lm.count_parameters(model), "n_params_non_embedding": model.non_embedding_parameters(),
        "steps": r.steps, "wall_s": r.wall_s, "warmup_s": r.warmup_s, "tokens_seen": r.tokens_seen,
        "loss_curve": r.loss_curve, "curve_every": r.curve_every, "final_loss": r.final_loss,
        "train_accuracy": r.train_accuracy, "converged": r.converged, "stop_reason": r.stop_reason,
        "trained_in_case": trained_here, "train_data_s": trained.data_s, "test_data_s": data_s,
        "eval_wall_s": evaluation.wall_s, "eval_batch_size": eval_batch_size(case),
        "threads": 1 if case.device == "cpu" else None,
        **task_columns(case),
    }


def run_case(case: AccuracyCase) -> dict:
    compiling.allow_recompiles(case.device)
    if isinstance(case, ExactnessCase):
        return run_exactness(case)
    return run_task(case)


# --- time estimate --------------------------------------------------------------------------------

# Assumed rates for estimating a profile's wall time before running it (see results/README.md).
CASE_OVERHEAD_S = {"cpu": 0.05, "cuda": 0.1}  # row write, pipe, cache clearing
EXACTNESS_S = {"cpu": 0.1, "cuda": 0.1}  # one Part A case, excluding compilation
WARMUP_S = {"cpu": 0.1, "cuda": 0.5}  # first training step of a model (cuBLAS, allocator)
FLEX_COMPILE_S = 15.0  # torch.compile of FlexAttention (block mask included), a key's first shape, CUDA only
FLEX_RECOMPILE_S = 5.0  # each further shape (static shapes recompile), dynamo and inductor warm
EVAL_TOKENS_PER_S = {"cpu": 2e5, "cuda": 2e7}  # the linear part of evaluation throughput
ATTENTION_FLOPS = {"cpu": 2e10, "cuda": 5e13}  # the quadratic part (materialized softmax, worst case)
WORKER_START_S = 20.0  # spawning the worker, importing torch and the variants, CUDA context


def data_seconds(case: TaskCase) -> float:
    """Python-bound ListOps generation, about 1.5 us per token including rejections (measured on CPU);
    the pool and test set are drawn once per process. Other tasks draw in vectorized torch."""
    if case.task != "listops":
        return 0.0
    return 1.5e-6 * case.train_seq_len * ((case.train_pool or 0) * 1.25 + case.n_test * TEST_BUCKETS)


def flex_compilations(case, device: str) -> list[tuple]:
    """The FlexAttention compile keys a case can trigger: (variant, dtype, phase, causal) with a shape."""
    if device != "cuda" or not registry.get(case.variant).backend_for(device).startswith("flex"):
        return []
    if isinstance(case, ExactnessCase):
        return [((case.variant, case.dtype, "fwd", case.causal), case.seq_len)]
    return [((case.variant, case.dtype, "train", True), case.train_seq_len),
            ((case.variant, case.dtype, "fwd", True), case.seq_len)]


def evaluation_seconds(case: TaskCase) -> float:
    """Evaluating a trained model: linear in the test tokens plus the attention's quadratic part."""
    tokens = case.n_test * case.seq_len
    quadratic = case.n_test * case.seq_len**2 * case.d_model * 4 * case.n_layers
    return tokens / EVAL_TOKENS_PER_S[case.device] + quadratic / ATTENTION_FLOPS[case.device]


def estimated_seconds(cases: list, device: str) -> float:
    """Upper estimate of a plan's wall time: training is bounded by each case's time budget; evaluation,
    compilation and data generation are estimated from the rates above."""
    total, trained, shapes, data = WORKER_START_S, set(), {}, set()
    for case in cases:
        total += CASE_OVERHEAD_S[device]
        if case.torch_dtype not in registry.get(case.variant).support.dtypes.get(device, ()):
            continue  # recorded unsupported without running
        if isinstance(case, ExactnessCase):
            total += EXACTNESS_S[device]
        else:
            if case.training_key() not in trained:
                trained.add(case.training_key())
                total += case.time_budget_s + WARMUP_S[device]
            if (case.train_task(), case.train_pool, case.n_test, case.seed) not in data:
                data.add((case.train_task(), case.train_pool, case.n_test, case.seed))
                total += data_seconds(case)
            total += evaluation_seconds(case)
        for key, shape in flex_compilations(case, device):
            seen = shapes.setdefault(key, set())
            if shape not in seen:
                total += FLEX_RECOMPILE_S if seen else FLEX_COMPILE_S
            seen.add(shape)
    return total


def case_cost(case: AccuracyCase) -> float:
    """Estimated seconds of one case, for `attnbench run --shard` to balance its parts (a model and its
    evaluations share an OOM group, so one shard). A model's training is charged to its evaluation at the
    training length and the first depth, which the profiles all plan; the others cost their evaluation."""
    device, seconds = case.device, CASE_OVERHEAD_S[case.device]
    if isinstance(case, ExactnessCase):
        return seconds + EXACTNESS_S[device]
    if case.seq_len == case.train_seq_len and case.depth in (None, 0.0):
        seconds += case.time_budget_s + WARMUP_S[device] + data_seconds(case)
    return seconds + evaluation_seconds(case)


def summarize(out_dir, console) -> None:
    """After a run: the claims this run can speak to."""
    from harness import store

    rows = store.load(out_dir)
    for claim in check_claims(rows).values():
        if claim.reproduced is not None:
            console.print(f"{'reproduced' if claim.reproduced else 'NOT reproduced'}: {claim.claim} "
                          f"({claim.summary})")


# --- claims ---------------------------------------------------------------------------------------

SOLVED = 0.9  # accuracy at which a task counts as solved
FAILED = 0.5  # accuracy at or below which a model counts as failing
BEHIND = 0.1  # how far behind softmax a family must fall at the most pairs


@dataclass
class Claim:
    claim: str
    reproduced: bool | None  # None: the results hold no rows to decide it
    figures: dict = field(default_factory=dict)
    summary: str = ""


def _best(rows: pd.DataFrame) -> pd.DataFrame:
    """Learned-task rows at each trained model's best learning rate (the report's rule)."""
    from harness.report import data

    columns = [*data.LEARNED_COLUMNS, "variant", "status", "train_len", "window", "global_tokens",
               "key_distance", "key_position", "key_len"]
    if rows.empty or "task" not in rows.columns:
        return pd.DataFrame(columns=columns)
    return data.with_columns(data.best_lr(data.learned(data.fill_family(rows))), columns)


def _mean(frame: pd.DataFrame, by) -> dict:
    return {k if not isinstance(k, float) or not k.is_integer() else int(k): round(float(v), 4)
            for k, v in frame.groupby(by).accuracy.mean().items()}


def softmax_families() -> set[str]:
    """Families of full softmax attention (vanilla, flash): the function the others approximate."""
    return {v.family for v in registry.all_variants() if v.full_softmax}


def claim_softmax_solves_mqar(best: pd.DataFrame) -> Claim:
    text = "softmax attention solves MQAR at every width"
    rows = best[(best.task == "mqar") & best.family.isin(softmax_families())]
    if rows.empty:
        return Claim(text, None, summary="no softmax MQAR rows")
    per_config = rows.groupby(["d_model", "train_len", "kv_pairs"]).accuracy.max()
    figures = {f"d={int(d)} N={int(n)} kv={int(kv)}": round(float(a), 4)
               for (d, n, kv), a in per_config.items()}
    worst = float(per_config.min())
    return Claim(text, worst >= SOLVED, figures,
                 f"lowest accuracy {worst:.3f} over {len(per_config)} configs")


def claim_linear_performer_fall_behind(best: pd.DataFrame) -> Claim:
    text = "linear attention and performer fall behind softmax on MQAR as kv_pairs grows"
    mqar = best[best.task == "mqar"]
    softmax = mqar[mqar.family.isin(softmax_families())].groupby("kv_pairs").accuracy.mean()
    figures, verdicts = {"softmax": _mean(mqar[mqar.family.isin(softmax_families())], "kv_pairs")}, []
    for family in ("linear", "performer"):
        rows = mqar[mqar.family == family]
        acc = rows.groupby("kv_pairs").accuracy.mean()
        common = sorted(set(acc.index) & set(softmax.index))
        if len(common) < 2:
            continue
        gap = softmax[common] - acc[common]
        figures[family] = _mean(rows, "kv_pairs")
        figures[f"{family}_gap"] = {int(k): round(float(g), 4) for k, g in gap.items()}
        verdicts.append(bool(gap.iloc[-1] >= BEHIND and gap.iloc[-1] > gap.iloc[0]))
    if not verdicts:
        return Claim(text, None, figures,
                     "needs MQAR rows at two or more kv_pairs for softmax and linear/performer")
    return Claim(text, all(verdicts), figures, "gap to softmax at the most pairs >= "
                 f"{BEHIND} and larger than at the fewest, for {len(verdicts)} of linear/performer")


def claim_mamba_selective_copying(best: pd.DataFrame) -> Claim:
    text = "mamba solves selective copying"
    rows = best[(best.task == "selective_copy") & (best.family == "mamba") & (best.seq_len == best.train_len)]
    if rows.empty:
        return Claim(text, None, summary="no mamba selective-copying rows")
    per_len = rows.groupby("seq_len").accuracy.max()
    longest = int(per_len.index.max())
    return Claim(text, float(per_len[longest]) >= SOLVED, {"by_seq_len": _mean(rows, "seq_len")},
                 f"accuracy {per_len[longest]:.3f} at N={longest}")


def _passkey_reach(rows: pd.DataFrame) -> pd.Series:
    """Every digit 'inside' the window (or among the global tokens, which all positions see), some digit
    'outside' the reach of n_layers stacked windows, else 'between'. Each digit is read from
    key_distance tokens back; the last one sits at key_position + key_len - 1."""
    window, globals_ = rows.window.astype(float), rows.global_tokens.fillna(0).astype(float)
    distance = rows.key_distance.astype(float)
    last = rows.key_position.astype(float) + rows.key_len.astype(float) - 1
    inside = (distance <= window) | (last < globals_)
    outside = (distance > rows.n_layers.astype(float) * window) & (last >= globals_)
    labels = ["inside" if i else "outside" if o else "between" for i, o in zip(inside, outside, strict=True)]
    return pd.Series(labels, index=rows.index)


def claim_window_fails_outside(best: pd.DataFrame) -> Claim:
    text = "sliding-window attention (longformer) fails when the key lies outside its window"
    needed = {"window", "key_distance", "key_position", "key_len", "global_tokens"}
    rows = best[(best.task == "passkey") & (best.family == "longformer")]
    if rows.empty or not needed <= set(rows.columns) or rows.key_distance.isna().all():
        return Claim(text, None, summary="no longformer passkey rows at fixed depths")
    rows = rows[rows.key_distance.notna() & rows.window.notna()]
    reach = _passkey_reach(rows)
    acc = rows.groupby(reach).accuracy.mean()
    figures = {k: round(float(v), 4) for k, v in acc.items()}
    if "outside" not in acc or "inside" not in acc:
        return Claim(text, None, figures, "needs passkey depths both inside and outside the window")
    ok = acc["outside"] <= FAILED and acc["inside"] >= SOLVED
    return Claim(text, bool(ok), figures,
                 f"accuracy {acc['inside']:.3f} inside the window, {acc['outside']:.3f} outside")


def claim_mamba_extrapolates(best: pd.DataFrame) -> Claim:
    text = "mamba extrapolates induction heads beyond its training length; softmax attention does not"
    rows = best[best.task == "induction"]
    mamba, softmax = rows[rows.family == "mamba"], rows[rows.family.isin(softmax_families())]
    if mamba.empty or softmax.empty or not (rows.seq_len >= 4 * rows.train_len).any():
        return Claim(text, None,
                     summary="needs induction rows of mamba and softmax at >= 4x the training length")
    figures = {"mamba": _mean(mamba, "seq_len"), "softmax": _mean(softmax, "seq_len")}

    def split(frame):
        return (frame[frame.seq_len == frame.train_len].accuracy.mean(),
                frame[frame.seq_len >= 4 * frame.train_len].accuracy.mean())

    (m_in, m_far), (s_in, s_far) = split(mamba), split(softmax)
    learned = m_in >= SOLVED and s_in >= SOLVED
    ok = learned and m_far >= SOLVED and s_far <= FAILED
    note = "" if learned or math.isnan(m_in) else "; not both learned at the training length"
    return Claim(text, bool(ok), figures, f"at >= 4x the training length: mamba {m_far:.3f}, softmax "
                 f"{s_far:.3f} (at the training length {m_in:.3f}, {s_in:.3f}){note}")


def check_claims(rows: pd.DataFrame) -> dict[str, Claim]:
    """The published findings the standard profile should reproduce, decided from a results frame
    (`harness.store.load`). Each claim is True, False, or None when the frame lacks the rows."""
    best = _best(rows)
    return {
        "softmax_solves_mqar": claim_softmax_solves_mqar(best),
        "linear_performer_fall_behind": claim_linear_performer_fall_behind(best),
        "mamba_selective_copying": claim_mamba_selective_copying(best),
        "window_fails_outside": claim_window_fails_outside(best),
        "mamba_extrapolates_induction": claim_mamba_extrapolates(best),
    }
