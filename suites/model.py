"""The small models every learned task trains, and their training loop.

token embedding -> n_layers x [norm -> (short conv) -> mixer -> residual -> norm -> MLP -> residual]
                -> norm -> head

The mixer is any registered variant (`v.mixer(d_model, n_heads, causal=..., **params)`); attention
mixers get rotary position embeddings (rope=True), mamba needs none. Two heads:
- `LanguageModel` (causal mixers): next-token logits from the embedding matrix (tied), taken only at
  labelled positions (the head runs there alone, which keeps large vocabularies cheap);
- `Classifier` (non-causal mixers, LRA's posing of ListOps): the mean of the final states over the
  non-padding tokens, then a linear layer to the classes. A mixer that is causal only (mamba) runs
  bidirectionally there (`Bidirectional`: a forward and a reversed pass of one mixer, summed).
The optional short convolution (`short_conv` taps, 0 for none) is the depthwise causal convolution that
H3, Based and Mamba put before their mixers: it hands every position its few predecessors, which
attention otherwise learns to fetch with a previous-token head in a late jump (MQAR, induction heads).
It mixes only a few neighbours, so recall over longer distances still goes through the mixer.
Parameter counts are matched across variants by the MLP width: a mixer larger than the attention block
(mamba) gets a narrower MLP, so every model has the same number of parameters up to a few per layer
(`mlp_width_for`).

Training is bounded by steps and by wall time, and stops early once the accuracy on a validation set,
measured every `validate_every` steps, reaches a criterion.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness import registry
from suites.tasks import IGNORE, Batch

MLP_RATIO = 4  # MLP width of the attention model: MLP_RATIO * d_model
RECENT_STEPS = 20  # window of the running training accuracy
CURVE_POINTS = 64  # loss curve resolution: about this many points over max_steps


def uses_rope(variant_name: str) -> bool:
    """Attention mixers take position from rotary embeddings; mamba's recurrence is ordered already."""
    return registry.get(variant_name).attention_fn is not None


def mixer_kwargs(variant_name: str, params: dict, rope: bool | None = None) -> dict:
    """Keyword arguments of the mixer; rope None means the default (on for attention mixers)."""
    rope = uses_rope(variant_name) if rope is None else rope
    return {**params, "rope": True} if rope else dict(params)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Bidirectional(nn.Module):
    """A causal mixer run both ways: over x, and over x reversed (its output flipped back), summed. The
    two directions share the mixer's weights (Caduceus's BiMamba ties them too), so a bidirectional
    block has the parameters of a causal one and the MLP matching stays the same for every family."""

    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x) + self.mixer(x.flip(1)).flip(1)


def make_mixer(variant_name: str, d_model: int, n_heads: int, params: dict, *, causal: bool = True,
               rope: bool | None = None) -> nn.Module:
    """The variant's mixer; non-causal for a variant that has only a causal one: `Bidirectional`."""
    v, kwargs = registry.get(variant_name), mixer_kwargs(variant_name, params, rope)
    if causal or v.support.non_causal:
        return v.mixer(d_model, n_heads, causal=causal, **kwargs)
    return Bidirectional(v.mixer(d_model, n_heads, causal=True, **kwargs))


def mixer_parameters(variant_name: str, d_model: int, n_heads: int, params: dict, causal: bool = True) -> int:
    """Parameters of one mixer, counted on the meta device (nothing is allocated). Remembered per mixer
    factory, defaults and arguments: a plan derives every case's MLP width from it, thousands of cases over
    a few dozen distinct mixers (building each on the meta device took most of the planning time)."""
    v = registry.get(variant_name)
    try:
        key = (variant_name, v.mixer_factory, v.support.non_causal, uses_rope(variant_name), d_model, n_heads,
               causal, json.dumps([params, v.defaults], sort_keys=True))
    except TypeError:  # a value JSON cannot spell: counted afresh
        key = None
    if key is None or key not in _MIXER_PARAMETERS:
        with torch.device("meta"):
            count = count_parameters(make_mixer(variant_name, d_model, n_heads, params, causal=causal))
        if key is None:
            return count
        _MIXER_PARAMETERS[key] = count
    return _MIXER_PARAMETERS[key]


_MIXER_PARAMETERS: dict[tuple, int] = {}


def attention_mixer_parameters(d_model: int) -> int:
    """The reference block: fused QKV and output projections, no biases."""
    return 4 * d_model * d_model


def mlp_width_for(variant_name: str, d_model: int, n_heads: int, params: dict, causal: bool = True) -> int:
    """MLP width that gives this variant's block the parameters of the attention block (MLP 4x)."""
    reference = attention_mixer_parameters(d_model) + 2 * d_model * MLP_RATIO * d_model
    mixer = mixer_parameters(variant_name, d_model, n_heads, params, causal)
    width = round((reference - mixer) / (2 * d_model))
    if width < d_model // 4:
        raise ValueError(f"{variant_name}'s mixer at d_model {d_model} is too large to match the attention "
                         f"block's parameters with an MLP (width would be {width})")
    return width


class ShortConv(nn.Module):
    """Depthwise causal convolution over the sequence: (batch, seq, d) -> same; position t sees t-k+1..t."""

    def __init__(self, d_model: int, taps: int):
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, taps, groups=d_model, padding=taps - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, d_model: int, mlp_width: int, short_conv: int = 0):
        super().__init__()
        self.mixer_norm, self.mixer = nn.LayerNorm(d_model), mixer
        self.short_conv = ShortConv(d_model, short_conv) if short_conv else nn.Identity()
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_width, bias=False), nn.GELU(),
                                 nn.Linear(mlp_width, d_model, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.short_conv(self.mixer_norm(x)))
        return x + self.mlp(self.mlp_norm(x))


def layer_params(variant_name: str, params: dict, layer: int) -> dict:
    """A variant that draws randomness (performer's features, BigBird's random blocks) draws it per
    layer, as in their papers: layer i's seed comes from the model's seed and i."""
    defaults = registry.get(variant_name).defaults
    if "seed" not in defaults:
        return params
    return {**params, "seed": hash((params.get("seed", defaults["seed"]), layer)) % 2**31}


class Backbone(nn.Module):
    """Embedding, blocks and final norm: (batch, seq) tokens -> (batch, seq, d_model) states."""

    causal = True

    def __init__(self, variant: str, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 mlp_width: int, params: dict | None = None, rope: bool | None = None, short_conv: int = 0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        kwargs = params or {}
        mixers = (make_mixer(variant, d_model, n_heads, layer_params(variant, kwargs, layer),
                             causal=self.causal, rope=rope) for layer in range(n_layers))
        self.blocks = nn.ModuleList(Block(mixer, d_model, mlp_width, short_conv) for mixer in mixers)
        self.norm = nn.LayerNorm(d_model)

    def redraw_features(self, step: int) -> None:
        """Performer redraws its random features every `redraw_every` training steps (its paper's
        practice): the mixers' `draw` moves on. A no-op for mixers without `redraw_every`."""
        for block in self.blocks:
            params = getattr(block.mixer, "params", {})
            if params.get("redraw_every"):
                params["draw"] = step // params["redraw_every"]

    def hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.embedding(inputs)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def non_embedding_parameters(self) -> int:
        return count_parameters(self) - self.embedding.weight.numel()


class LanguageModel(Backbone):
    """Causal mixers; predicts the next token at labelled positions with the tied embedding matrix."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.embedding.weight.T  # tied head

    def scored_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (n_scored, vocab) in float32 and labels (n_scored,) at the labelled positions only."""
        scored = batch.labels != IGNORE
        return self.logits(self.hidden(batch.inputs)[scored]).float(), batch.labels[scored]


class Classifier(Backbone):
    """Non-causal mixers; one class per sequence from the mean state over its non-padding tokens.
    Each sequence carries its class as its one label (at any position)."""

    causal = False

    def __init__(self, variant: str, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 mlp_width: int, params: dict | None = None, rope: bool | None = None, *, n_classes: int,
                 pad_token: int):
        super().__init__(variant, vocab_size, d_model, n_layers, n_heads, mlp_width, params, rope)
        self.head, self.pad_token = nn.Linear(d_model, n_classes), pad_token

    def scored_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch, n_classes) in float32 and the class of each sequence (batch,)."""
        tokens = (batch.inputs != self.pad_token).unsqueeze(-1).to(self.norm.weight.dtype)
        pooled = (self.hidden(batch.inputs) * tokens).sum(1) / tokens.sum(1).clamp(min=1)
        labelled = batch.labels != IGNORE
        if not bool((labelled.sum(1) == 1).all()):
            raise ValueError("a classification example carries exactly one label")
        return self.head(pooled).float(), batch.labels[labelled]


@dataclass
class TrainResult:
    steps: int = 0
    wall_s: float = 0.0  # training time, the warm-up step and the validations included
    warmup_s: float = 0.0  # the first step (compilation, autotuning), not charged to the time budget
    tokens_seen: int = 0
    loss_curve: list[float] = field(default_factory=list)  # mean training loss over each curve_every steps
    curve_every: int = 1
    final_loss: float = math.nan  # mean training loss over the last curve interval
    train_accuracy: float = 0.0  # running accuracy at labelled positions over the last RECENT_STEPS steps
    valid_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation accuracy)
    steps_to_criterion: int | None = None  # the first validation at or above the criterion (held or not)
    stop_reason: str = ""  # "criterion", "max_steps", "time_budget" or "diverged"

    @property
    def valid_accuracy(self) -> float:
        """The last validation accuracy (NaN without validation)."""
        return self.valid_curve[-1][1] if self.valid_curve else math.nan


def autocast(device: str, dtype: torch.dtype):
    """bf16/fp16 autocast on CUDA for half dtypes; full precision otherwise."""
    if device == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def learning_rate(step: int, max_steps: int, peak: float) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to a tenth of the peak."""
    warmup = max(1, max_steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_for(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no decay on norms, biases and parameters that ask for none (mamba's A_log and D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Validation:
    """Accuracy on a validation set every `every` steps; training stops once it has been at or above
    `criterion` at `holds` validations in a row (1: the first time it gets there)."""

    accuracy: Callable[[], float]
    every: int
    criterion: float | None = None
    holds: int = 1


def train(model: Backbone, batches: Iterator[Batch], *, lr: float, max_steps: int, time_budget_s: float,
          weight_decay: float, device: str, dtype: torch.dtype,
          validation: Validation | None = None) -> TrainResult:
    """Train until max_steps, the time budget, the validation criterion or a non-finite loss."""
    opt = optimizer_for(model, lr, weight_decay)
    result = TrainResult(curve_every=max(1, max_steps // CURVE_POINTS))
    recent_correct, recent_total, interval = [], [], []
    started = time.perf_counter()
    budget_start = started
    in_a_row = 0  # consecutive validations at or above the criterion
    model.train()
    for step in range(max_steps):
        model.redraw_features(step)
        batch = next(batches).to(device)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, max_steps, lr)
        with autocast(device, dtype):
            logits, labels = model.scored_logits(batch)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        result.steps, result.tokens_seen = step + 1, result.tokens_seen + batch.inputs.numel()
        # One sync per step (the time budget needs the real time anyway).
        correct = (logits.argmax(-1) == labels).sum().float()
        loss_value, correct = torch.stack([loss.detach(), correct]).tolist()
        if not math.isfinite(loss_value):
            result.stop_reason = "diverged"
            break
        interval.append(loss_value)
        recent_correct.append(correct)
        recent_total.append(labels.numel())
        del recent_correct[:-RECENT_STEPS], recent_total[:-RECENT_STEPS]
        if len(interval) == result.curve_every:
            result.loss_curve.append(sum(interval) / len(interval))
            interval = []
        result.train_accuracy = sum(recent_correct) / max(1, sum(recent_total))
        if step == 0:
            _sync(device)
            result.warmup_s = time.perf_counter() - started
            budget_start = time.perf_counter()
        if validation is not None and (step + 1) % validation.every == 0:
            in_a_row = in_a_row + 1 if _validate(result, validation) else 0
            if in_a_row >= validation.holds:
                result.stop_reason = "criterion"
                break
        if time.perf_counter() - budget_start > time_budget_s:
            result.stop_reason = "time_budget"
            break
    else:
        result.stop_reason = "max_steps"
    if validation is not None and (not result.valid_curve or result.valid_curve[-1][0] != result.steps):
        _validate(result, validation)  # the final model's validation accuracy
    if interval:
        result.loss_curve.append(sum(interval) / len(interval))
    result.final_loss = result.loss_curve[-1] if result.loss_curve else math.nan
    _sync(device)
    result.wall_s = time.perf_counter() - started
    return result


def _validate(result: TrainResult, validation: Validation) -> bool:
    """Record the validation accuracy now; True when it reaches the criterion (the first time counts)."""
    accuracy = validation.accuracy()
    result.valid_curve.append((result.steps, accuracy))
    reached = validation.criterion is not None and accuracy >= validation.criterion
    if reached and result.steps_to_criterion is None:
        result.steps_to_criterion = result.steps
    return reached


@dataclass
class Evaluation:
    accuracy_tokens: float  # fraction of labelled positions predicted right
    accuracy_sequences: float  # fraction of examples with every labelled position right
    loss: float
    n_examples: int
    wall_s: float
    per_example: list[float] = field(default_factory=list)  # each example's fraction of its labels right


EVAL_TOKENS = {"cpu": 8192, "cuda": 32768}  # tokens per evaluation batch


def eval_batch_size(case, seq_len: int | None = None) -> int:
    """Sequences per evaluation batch of a learned-task case (its n_test, device and seq_len) at seq_len
    (default the case's)."""
    return max(1, min(case.n_test, EVAL_TOKENS[case.device] // (seq_len or case.seq_len)))


@torch.no_grad()
def evaluate(model: Backbone, data: Batch, *, batch_size: int, device: str, dtype: torch.dtype) -> Evaluation:
    """Accuracy on held-out data. A non-finite logit counts as a wrong answer (a diverged model
    answers nothing), and its loss is reported as it is."""
    started = time.perf_counter()
    model.eval()
    right_per_example, labels_per_example = [], []
    loss_sum = 0.0
    for start in range(0, len(data), batch_size):
        batch = Batch(data.inputs[start:start + batch_size], data.labels[start:start + batch_size]).to(device)
        with autocast(device, dtype):
            logits, labels = model.scored_logits(batch)
        right = (logits.argmax(-1) == labels) & torch.isfinite(logits).all(-1)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        rows = (batch.labels != IGNORE).nonzero()[:, 0]  # scored labels in row order, as scored_logits
        right_per_example.append(torch.bincount(rows[right], minlength=len(batch)))
        labels_per_example.append(torch.bincount(rows, minlength=len(batch)))
    model.train()
    right, total = torch.cat(right_per_example).cpu(), torch.cat(labels_per_example).cpu()
    per_example = (right / total.clamp(min=1)).tolist()
    n_labels, exact = max(1, int(total.sum())), float((right == total).float().mean())
    return Evaluation(int(right.sum()) / n_labels, exact, loss_sum / n_labels, len(data),
                      time.perf_counter() - started, per_example)
