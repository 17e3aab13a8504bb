"""Wall time of an accuracy or long-range plan, estimated before running it (results/README.md).

Training is bounded by each case's step cap and time budget: the estimate charges the smaller of the
budget and max_steps steps at a modelled step time, plus validations, evaluation and data generation
from the rates below, and what the plan compiles: each distinct compiled call (`compile_shapes`: the
training step, validation and evaluation graphs at their shapes) charged once, as its variant declares
(harness.estimate; FlexAttention's figures are CPU-backend lower bounds, the Triton autotune ones
assumptions). The work of a variant's mixers is the variant's to say (its `cost` hook; harness.costs
states the default for one that declares none). Steps stop earlier at the validation criterion, so for
trainings that reach it the estimate is an upper bound. The CPU rates were measured on
the repository's 2-core machine (one thread per worker); the CUDA rates are assumptions (no GPU has run
these suites yet).
"""

from __future__ import annotations

from harness import registry
from harness.estimate import Estimate, compile_cost, shape_compile_seconds, with_compiles
from suites.exactness import CHECK_KINDS
from suites.model import eval_batch_size

CASE_OVERHEAD_S = {"cpu": 0.05, "cuda": 0.1}  # row write, pipe, cache clearing
EXACTNESS_S = {"cpu": 0.1, "cuda": 0.1}  # one Part A case that measures rel_err, excluding compilation
# One of Part A's other checks (suites.exactness.CHECK_KINDS) at the grid's short N: 0.01-0.04 s of CPU time
# measured here for every family (a few calls of N = 128); CUDA assumed like the others.
CHECK_S = {"cpu": 0.03, "cuda": 0.1}
WARMUP_S = {"cpu": 0.1, "cuda": 0.5}  # first training step of a model (cuBLAS, allocator)
WORKER_START_S = 20.0  # spawning the worker, importing torch and the variants, CUDA context
# A training step: matmul FLOPs (6 per parameter and token, plus the mixers') at MATMUL_FLOPS, the
# elementwise work of a scan at SCAN_ELEMENTS, the mixers' fixed time per layer (harness.costs.MixerCost),
# and a fixed cost per step (Python, optimizer, small kernels).
MATMUL_FLOPS = {"cpu": 2.4e10, "cuda": 2e13}
SCAN_ELEMENTS = {"cpu": 4e9, "cuda": 2e11}
STEP_OVERHEAD_S = {"cpu": 3e-3, "cuda": 1.5e-2}
FORWARD_SHARE = 1 / 3  # evaluation and validation: forward only


def data_seconds(case) -> float:
    """Python-bound ListOps generation, about 1.5 us per token including rejections (measured on CPU);
    the pool, validation and test sets are drawn once per process. Other tasks draw in vectorized torch."""
    if case.task != "listops":
        return 0.0
    from suites.tasks import HASH_BUCKETS

    return 1.5e-6 * case.train_seq_len * ((case.train_pool or 0) * 1.25
                                          + (case.n_test + case.n_valid) * HASH_BUCKETS)


def step_seconds(case, device: str, tokens: int, seq_len: int, share: float = 1.0) -> float:
    """One step over `tokens` tokens in sequences of seq_len (share: the forward's part of the work)."""
    d, layers = case.d_model, case.n_layers
    mixer = registry.get(case.variant).mixer_cost(d, layers, case.n_heads, seq_len, case.params)
    flops = 6 * layers * 12 * d * d + mixer.flops  # parameters matched to an attention block with a 4x MLP
    work = tokens * share * (flops / MATMUL_FLOPS[device] + mixer.scan_elements / SCAN_ELEMENTS[device])
    loops = share * layers * mixer.loop_s.get(device, 0.0)
    return work + loops + STEP_OVERHEAD_S[device]


def training_seconds(case, device: str) -> float:
    """Steps up to the cap (or the time budget), and the validations among them."""
    tokens = case.batch_size * case.train_seq_len
    step = step_seconds(case, device, tokens, case.train_seq_len)
    validation = step_seconds(case, device, case.n_valid * case.train_seq_len, case.train_seq_len,
                              FORWARD_SHARE)
    steps = min(case.max_steps, case.time_budget_s / step)
    return steps * step + steps / case.validate_every * validation + WARMUP_S[device]


def exactness_seconds(case, device: str) -> float:
    return (CHECK_S if case.input_kind in CHECK_KINDS else EXACTNESS_S)[device]


def compile_shapes(case) -> list[dict]:
    """The compiled calls of a case (harness.estimate): an exactness check's forward at its length (a check
    that calls several shapes, e.g. decode's, is charged one); a learned task's training step, validation
    and evaluation (a short last batch is not charged)."""
    shape = {"dtype": case.dtype, "heads": case.n_heads, "head_dim": case.head_dim, "causal": case.causal}
    if case.task == "exactness":
        return [{**shape, "graph": "fwd", "batch": case.batch, "seq_len": case.seq_len, "backward": False}]
    n = case.train_seq_len
    return [{**shape, "graph": "train", "batch": case.batch_size, "seq_len": n, "backward": True},
            {**shape, "graph": "eval", "batch": eval_batch_size(case, n), "seq_len": n, "backward": False},
            {**shape, "graph": "eval", "batch": eval_batch_size(case), "seq_len": case.seq_len,
             "backward": False}]


def estimate(cases: list) -> Estimate:
    """Upper estimate of a plan's wall time (see the module's docstring), its compiling included."""
    device = cases[0].device if cases else "cpu"
    total, trained, data = WORKER_START_S, set(), set()
    for case in cases:
        total += CASE_OVERHEAD_S[device]
        if case.torch_dtype not in registry.get(case.variant).support.dtypes.get(device, ()):
            continue  # recorded unsupported without running
        if case.task == "exactness":
            total += exactness_seconds(case, device)
            continue
        if case.training_key() not in trained:
            trained.add(case.training_key())
            total += training_seconds(case, device)
        if (case.train_task(), case.train_pool, case.n_test, case.seed) not in data:
            data.add((case.train_task(), case.train_pool, case.n_test, case.seed))
            total += data_seconds(case)
        total += step_seconds(case, device, case.n_test * case.seq_len, case.seq_len, FORWARD_SHARE)
    return with_compiles(total, compile_cost(cases, compile_shapes))


def case_cost(case) -> float:
    """Estimated seconds of one case, for `attnbench run --shard` to balance its parts (a model and its
    evaluations share an OOM group, so one shard). A model's training is charged to its evaluation at the
    training length and the first depth, which the profiles all plan; the others cost their evaluation;
    each its own shapes' compiles where its code path compiles per shape."""
    device = case.device
    seconds = CASE_OVERHEAD_S[device] + shape_compile_seconds(case, compile_shapes)
    if case.task == "exactness":
        return seconds + exactness_seconds(case, device)
    if case.seq_len == case.train_seq_len and case.depth in (None, 0.0):
        seconds += training_seconds(case, device) + data_seconds(case)
    return seconds + step_seconds(case, device, case.n_test * case.seq_len, case.seq_len, FORWARD_SHARE)
