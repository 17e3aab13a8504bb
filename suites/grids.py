"""What the accuracy and long-range suites run in each profile: Part A's exactness grids and the
learned-task configurations (`TaskSpec`), per profile and device.

The CPU `standard` profile is one dedicated experiment per published finding (`suites.findings`),
scaled to a 2-core machine; the GPU `standard` and `full` profiles run the same recipes at the
published sizes. Every experiment lists its variants here: adding a family to a finding's experiment
is one entry in its `variants`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Small windows and blocks in the quick profile, so that masked patterns differ from full attention at
# its short lengths. Standard and full use each variant's defaults unless an experiment sets them.
QUICK_VARIANT_PARAMS = {
    "longformer": {"window": 8, "global_tokens": 2},
    "longformer-banded": {"window": 8, "global_tokens": 2},
    "longformer-xformers": {"window": 8},
    "sparse-bigbird": {"block_size": 8},
    "sparse-strided": {"block_size": 8, "stride": 2},
    "performer": {"nb_features": 32},
    "linear": {"chunk_size": 8},  # chunks no longer than the shortest quick sequence (no padding waste)
}
# ListOps is classified by a bidirectional encoder; mamba, causal only, runs both ways (two mixers): at
# expand 1 each, the pair has the parameters of one causal block at expand 2 (the MLP matches the rest).
BIDIRECTIONAL = {"mamba": {"expand": 1}}
# Learned tasks in the GPU standard profile: the variants of the published findings. Flash computes
# vanilla's function; longformer-banded computes longformer's without FlexAttention's compilation, which
# the 20 minutes cannot afford for every training shape; the sparse family trains in quick and full.
STANDARD_LEARNED = ("vanilla", "longformer-banded", "linear", "performer", "mamba")


@dataclass(frozen=True)
class TaskSpec:
    """A learned-task configuration: trained at each train_seq_len, for each d_model, variant and seed,
    then evaluated at each of eval_lens (default: the training length) and passkey depths.

    Learning rates: with one seed every rate in `lrs` trains; with more, the first seed trains at every
    rate (the sweep) and the others at the one its validation accuracy chose. Training stops at
    `max_steps`, at the time budget (a safety net), or once the validation accuracy, measured every
    `validate_every` steps on `n_valid` held-out examples, reaches `criterion`.
    """

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
    short_conv: int = 0  # taps of a depthwise causal convolution before every mixer (suites.model)
    n_test: int = 256
    train_pool: int | None = None
    batch_tokens: bool = False
    experiment: str | None = None  # the finding this configuration decides (suites.findings reads its rows)
    variants: tuple[str, ...] | None = None  # None: the profile's learned variants
    variant_params: dict[str, dict] = field(default_factory=dict)  # per variant, beyond its defaults
    seeds: int = 1
    criterion: float | None = None
    validate_every: int = 100
    n_valid: int = 256

    def batch_for(self, train_len: int) -> int:
        return max(1, self.batch_size // train_len) if self.batch_tokens else self.batch_size


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
    # Causal only: each new (dtype, mask) costs FlexAttention compilations on a GPU (see suites.estimate).
    "standard": ExactnessGrid((("random", 1024), ("peaked", 1024), ("near_duplicate", 1024), ("long", 8192)),
                              (256, 4096, 16384), (16, 64, 256, 1024), 1024, non_causal=False),
    "full": ExactnessGrid((("random", 1024), ("peaked", 1024), ("near_duplicate", 1024), ("long", 16384)),
                          (128, 256, 512, 2048, 4096, 8192, 32768),
                          (16, 32, 64, 128, 256, 512, 1024, 2048), 4096),
}
CPU_EXACTNESS = {  # the CPU standard profile: the same kinds, at lengths a 2-core machine takes in seconds
    "standard": ExactnessGrid((("random", 512), ("peaked", 512), ("near_duplicate", 512), ("long", 4096)),
                              (128, 1024, 4096), (16, 64, 256, 1024), 512, non_causal=False),
}


def exactness_grid(profile: str, device: str) -> ExactnessGrid:
    return CPU_EXACTNESS.get(profile, EXACTNESS[profile]) if device == "cpu" else EXACTNESS[profile]


# --- the accuracy suite ---------------------------------------------------------------------------

ACCURACY_QUICK = [
    # The smallest MQAR: 2 of 3 keys, 2 of 4 values, 8 tokens. Vanilla solves it in about 500 steps (some
    # 6 s on one CPU core); the other tasks get a glimpse of training only.
    TaskSpec("mqar", (8,), (32,), (3e-3,), 128, 2000, 10.0, kv_pairs=(2,), task_params={"vocab": 8},
             n_heads=4, criterion=0.99, validate_every=50, n_valid=128),
    TaskSpec("selective_copy", (32,), (32,), (3e-3,), 32, 200, 1.0, task_params={"n_memorize": 4}, n_heads=4),
    TaskSpec("induction", (32,), (32,), (3e-3,), 32, 200, 1.0, n_heads=4),
    TaskSpec("passkey", (32,), (32,), (3e-3,), 32, 200, 1.0, depths=(0.0, 1.0), task_params={"key_len": 2},
             n_test=64, n_heads=4),
    TaskSpec("listops", (64,), (32,), (3e-3,), 32, 200, 1.0, task_params={"min_length": 8}, train_pool=512,
             n_test=128, n_heads=4, variant_params=BIDIRECTIONAL),
]
# GPU standard: budgets sized to fit the 20-minute estimate (see suites.estimate); batches in tokens.
ACCURACY_STANDARD = [
    TaskSpec("mqar", (64, 128, 256, 512), (64, 128, 256), (1e-3, 3e-3), 32768, 5000, 2.0,
             kv_pairs=(4, 8, 16, 64), batch_tokens=True),
    TaskSpec("selective_copy", (1024,), (64,), (1e-3, 3e-3), 32768, 5000, 3.0, batch_tokens=True),
    TaskSpec("induction", (256,), (64,), (1e-3, 3e-3), 32768, 5000, 3.0,
             eval_lens=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384), n_test=128, batch_tokens=True),
    TaskSpec("passkey", (1024,), (64,), (1e-3, 3e-3), 32768, 5000, 3.0, depths=(0.0, 0.25, 0.5, 0.75, 1.0),
             n_test=128, batch_tokens=True),
    TaskSpec("listops", (512,), (64,), (1e-3, 3e-3), 16384, 5000, 3.0, task_params={"min_length": 128},
             train_pool=4096, batch_tokens=True, variant_params=BIDIRECTIONAL),
]
ACCURACY_FULL = [
    TaskSpec("mqar", (64, 128, 256, 512), (64, 128, 256, 512), (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), 65536, 20000,
             120.0, kv_pairs=(4, 8, 16, 64), batch_tokens=True),
    TaskSpec("selective_copy", (4096,), (64,), (3e-4, 1e-3, 3e-3), 131072, 20000, 600.0, batch_tokens=True),
    TaskSpec("induction", (256,), (64,), (3e-4, 1e-3, 3e-3), 32768, 20000, 300.0,
             eval_lens=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536), n_test=256,
             batch_tokens=True),
    TaskSpec("passkey", (4096,), (64,), (3e-4, 1e-3, 3e-3), 131072, 20000, 600.0,
             depths=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), batch_tokens=True),
    TaskSpec("listops", (2000,), (128,), (3e-4, 1e-3, 3e-3), 64000, 50000, 1200.0,
             task_params={"min_length": 500}, train_pool=96000, n_test=2000, n_layers=4, batch_tokens=True,
             variant_params=BIDIRECTIONAL),
]

# --- the long-range suite -------------------------------------------------------------------------

LONG_RANGE_QUICK = [
    TaskSpec("mqar", (16, 32), (32,), (3e-3,), 64, 300, 1.0, kv_pairs=(2, 4), task_params={"vocab": 64},
             n_heads=4),
    TaskSpec("selective_copy", (32, 128), (32,), (3e-3,), 32, 300, 1.0, task_params={"n_memorize": 4},
             n_heads=4),
    TaskSpec("passkey", (32,), (32,), (3e-3,), 32, 300, 1.0, eval_lens=(32, 128), depths=(0.0, 1.0),
             task_params={"key_len": 2}, n_test=64, n_heads=4),
    TaskSpec("listops", (128,), (32,), (3e-3,), 32, 300, 1.0, task_params={"min_length": 32},
             train_pool=512, n_test=128, n_heads=4, variant_params=BIDIRECTIONAL),
]
LONG_RANGE_STANDARD = [
    TaskSpec("mqar", (256, 1024, 4096), (128,), (1e-3, 3e-3), 32768, 5000, 2.0, kv_pairs=(16, 64, 256),
             batch_tokens=True),
    TaskSpec("selective_copy", (256, 4096), (64,), (1e-3, 3e-3), 65536, 5000, 3.0, batch_tokens=True),
    TaskSpec("passkey", (2048,), (64,), (1e-3, 3e-3), 65536, 5000, 3.0, eval_lens=(2048, 8192, 32768),
             depths=(0.0, 0.25, 0.5, 0.75, 1.0), n_test=32, batch_tokens=True),
    TaskSpec("listops", (2000,), (64,), (1e-3, 3e-3), 64000, 5000, 5.0, task_params={"min_length": 500},
             train_pool=4096, batch_tokens=True, variant_params=BIDIRECTIONAL),
]
LONG_RANGE_FULL = [
    TaskSpec("mqar", (256, 512, 1024, 2048, 4096), (128, 256), (3e-4, 1e-3, 3e-3), 65536, 20000, 120.0,
             kv_pairs=(16, 32, 64, 128, 256), batch_tokens=True),
    TaskSpec("selective_copy", (256, 1024, 4096, 16384), (64,), (3e-4, 1e-3, 3e-3), 131072, 20000, 600.0,
             batch_tokens=True),
    TaskSpec("passkey", (4096,), (64,), (3e-4, 1e-3, 3e-3), 131072, 20000, 600.0,
             eval_lens=(1024, 2048, 4096, 8192, 16384, 32768, 65536),
             depths=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), n_test=128, batch_tokens=True),
    TaskSpec("listops", (2000,), (128,), (3e-4, 1e-3, 3e-3), 64000, 50000, 1200.0,
             task_params={"min_length": 500}, train_pool=96000, n_test=2000, n_layers=4, batch_tokens=True,
             variant_params=BIDIRECTIONAL),
]

# --- the CPU standard profile: one experiment per finding (recipes: results/README.md) -----------------

# Head dimension 8 (d_model 64, 8 heads) and a 4-tap short convolution before every mixer: the settings
# under which softmax attention leaves the MQAR plateau within a few hundred steps on this machine.
# Performer draws as many features as a head has dimensions, so that its state matches linear attention's.
SMALL_STATE = {"performer": {"nb_features": 8}, "linear": {"chunk_size": 32}}
MQAR_CPU = dict(task_params={"vocab": 64}, n_heads=8, short_conv=4, experiment="mqar_capacity", seeds=3,
                criterion=0.99, validate_every=50, n_valid=256, n_test=512, variant_params=SMALL_STATE)
CPU_ACCURACY_STANDARD: list[TaskSpec] = [
    TaskSpec("mqar", (32, 32, 32), (64,), (1e-3, 3e-3), 64, 1200, 900.0, kv_pairs=(2, 4, 8),
             variants=("vanilla", "linear", "performer", "mamba"), **MQAR_CPU),
    TaskSpec("mqar", (32,), (128,), (1e-3, 3e-3), 64, 1200, 900.0, kv_pairs=(8,), variants=("mamba",),
             **MQAR_CPU),  # mamba at twice the width, at the most pairs
    TaskSpec("selective_copy", (64,), (64,), (1e-3, 3e-3), 64, 2000, 900.0,
             task_params={"n_memorize": 8, "vocab": 16}, n_heads=8, short_conv=4,
             experiment="selective_copying", variants=("mamba", "vanilla"), seeds=3, criterion=0.99,
             n_test=512),
    TaskSpec("listops", (256,), (64,), (1e-3, 3e-3), 32, 1500, 900.0, task_params={"min_length": 64},
             train_pool=8192, n_heads=8, experiment="listops_lra",
             variants=("vanilla", "longformer-banded", "linear", "performer", "mamba"),
             variant_params={**BIDIRECTIONAL, "longformer-banded": {"window": 16, "global_tokens": 1},
                             "performer": {"nb_features": 16}}, seeds=3, n_valid=512, n_test=1024),
]
CPU_LONG_RANGE_STANDARD: list[TaskSpec] = [
    TaskSpec("induction", (64,), (64,), (1e-3, 3e-3), 64, 1200, 900.0, eval_lens=(64, 128, 256, 512, 1024),
             task_params={"vocab": 16}, n_heads=8, short_conv=4, experiment="induction_extrapolation",
             variants=("mamba", "vanilla"), seeds=3, criterion=1.0, n_test=512),
    TaskSpec("passkey", (128,), (64,), (1e-3, 3e-3), 32, 1500, 900.0, eval_lens=(64, 128),
             depths=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0), task_params={"key_len": 2}, n_heads=8, short_conv=4,
             experiment="passkey_window", variants=("longformer-banded", "vanilla"),
             variant_params={"longformer-banded": {"window": 16, "global_tokens": 0}}, seeds=3,
             criterion=0.99, n_test=128),
]

GRIDS = {
    ("accuracy", "quick"): ACCURACY_QUICK, ("accuracy", "standard"): ACCURACY_STANDARD,
    ("accuracy", "full"): ACCURACY_FULL,
    ("long-range", "quick"): LONG_RANGE_QUICK, ("long-range", "standard"): LONG_RANGE_STANDARD,
    ("long-range", "full"): LONG_RANGE_FULL,
}
CPU_GRIDS = {("accuracy", "standard"): CPU_ACCURACY_STANDARD,
             ("long-range", "standard"): CPU_LONG_RANGE_STANDARD}


def learned_specs(suite: str, profile: str, device: str) -> list[TaskSpec]:
    if device == "cpu" and (suite, profile) in CPU_GRIDS:
        return CPU_GRIDS[suite, profile]
    return GRIDS[suite, profile]
