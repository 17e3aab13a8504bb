"""The small language model every learned task trains, and its training loop.

token embedding -> n_layers x [norm -> mixer -> residual -> norm -> MLP -> residual] -> norm -> head

The mixer is any registered variant (`v.mixer(d_model, n_heads, causal=True, **params)`); attention
mixers get rotary position embeddings (rope=True), mamba needs none. The head shares the embedding
matrix. Parameter counts are matched across variants by the MLP width: a mixer larger than the
attention block (mamba) gets a narrower MLP, so every model has the same number of parameters up to a
few per layer (`mlp_width_for`).

Training is bounded by steps and by wall time; the loss is taken only at labelled positions (the head
runs there alone, which keeps large vocabularies cheap).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness import registry
from suites.tasks import IGNORE, Batch

MLP_RATIO = 4  # MLP width of the attention model: MLP_RATIO * d_model
CONVERGED_ACCURACY = 0.9  # a run converged when its training accuracy ends at or above this
SOLVED_ACCURACY = 0.99  # training stops early once the recent training accuracy reaches this
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


def mixer_parameters(variant_name: str, d_model: int, n_heads: int, params: dict) -> int:
    """Parameters of one mixer, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        mixer = registry.get(variant_name).mixer(d_model, n_heads, causal=True,
                                                 **mixer_kwargs(variant_name, params))
    return count_parameters(mixer)


def attention_mixer_parameters(d_model: int) -> int:
    """The reference block: fused QKV and output projections, no biases."""
    return 4 * d_model * d_model


def mlp_width_for(variant_name: str, d_model: int, n_heads: int, params: dict) -> int:
    """MLP width that gives this variant's block the parameters of the attention block (MLP 4x)."""
    reference = attention_mixer_parameters(d_model) + 2 * d_model * MLP_RATIO * d_model
    width = round((reference - mixer_parameters(variant_name, d_model, n_heads, params)) / (2 * d_model))
    if width < d_model // 4:
        raise ValueError(f"{variant_name}'s mixer at d_model {d_model} is too large to match the attention "
                         f"block's parameters with an MLP (width would be {width})")
    return width


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, d_model: int, mlp_width: int):
        super().__init__()
        self.mixer_norm, self.mixer = nn.LayerNorm(d_model), mixer
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_width, bias=False), nn.GELU(),
                                 nn.Linear(mlp_width, d_model, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x))
        return x + self.mlp(self.mlp_norm(x))


def layer_params(variant_name: str, params: dict, layer: int) -> dict:
    """A variant that draws randomness (performer's features, BigBird's random blocks) draws it per
    layer, as in their papers: layer i's seed comes from the model's seed and i."""
    defaults = registry.get(variant_name).defaults
    if "seed" not in defaults:
        return params
    return {**params, "seed": hash((params.get("seed", defaults["seed"]), layer)) % 2**31}


class LanguageModel(nn.Module):
    def __init__(self, variant: str, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 mlp_width: int, params: dict | None = None, rope: bool | None = None):
        super().__init__()
        v, kwargs = registry.get(variant), mixer_kwargs(variant, params or {}, rope)
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        mixers = (v.mixer(d_model, n_heads, causal=True, **layer_params(variant, kwargs, layer))
                  for layer in range(n_layers))
        self.blocks = nn.ModuleList(Block(mixer, d_model, mlp_width) for mixer in mixers)
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

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.embedding.weight.T  # tied head

    def scored_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (n_scored, vocab) in float32 and labels (n_scored,) at the labelled positions only."""
        scored = batch.labels != IGNORE
        return self.logits(self.hidden(batch.inputs)[scored]).float(), batch.labels[scored]

    def non_embedding_parameters(self) -> int:
        return count_parameters(self) - self.embedding.weight.numel()


@dataclass
class TrainResult:
    steps: int = 0
    wall_s: float = 0.0  # training time, the warm-up step included
    warmup_s: float = 0.0  # the first step (compilation, autotuning), not charged to the time budget
    tokens_seen: int = 0
    loss_curve: list[float] = field(default_factory=list)  # mean training loss over each curve_every steps
    curve_every: int = 1
    final_loss: float = math.nan  # mean training loss over the last curve interval
    train_accuracy: float = 0.0  # running accuracy at labelled positions over the last RECENT_STEPS steps
    stop_reason: str = ""  # "max_steps", "time_budget", "solved" or "diverged"

    @property
    def converged(self) -> bool:
        return self.stop_reason != "diverged" and self.train_accuracy >= CONVERGED_ACCURACY


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


def train(model: LanguageModel, batches: Iterator[Batch], *, lr: float, max_steps: int,
          time_budget_s: float, weight_decay: float, device: str, dtype: torch.dtype) -> TrainResult:
    """Train until max_steps, the time budget, a solved task or a non-finite loss, whichever comes first."""
    opt = optimizer_for(model, lr, weight_decay)
    result = TrainResult(curve_every=max(1, max_steps // CURVE_POINTS))
    recent_correct, recent_total, interval = [], [], []
    started = time.perf_counter()
    budget_start = started
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
        if len(recent_total) == RECENT_STEPS and result.train_accuracy >= SOLVED_ACCURACY:
            result.stop_reason = "solved"
            break
        if time.perf_counter() - budget_start > time_budget_s:
            result.stop_reason = "time_budget"
            break
    else:
        result.stop_reason = "max_steps"
    if interval:
        result.loss_curve.append(sum(interval) / len(interval))
    result.final_loss = result.loss_curve[-1] if result.loss_curve else math.nan
    _sync(device)
    result.wall_s = time.perf_counter() - started
    return result


@dataclass
class Evaluation:
    accuracy_tokens: float  # fraction of labelled positions predicted right
    accuracy_sequences: float  # fraction of examples with every labelled position right
    loss: float
    n_examples: int
    wall_s: float


@torch.no_grad()
def evaluate(model: LanguageModel, data: Batch, *, batch_size: int, device: str,
             dtype: torch.dtype) -> Evaluation:
    """Accuracy on held-out data. A non-finite logit counts as a wrong answer (a diverged model
    answers nothing), and its loss is reported as it is."""
    started = time.perf_counter()
    model.eval()
    correct = total = seq_correct = 0
    loss_sum = 0.0
    for start in range(0, len(data), batch_size):
        batch = Batch(data.inputs[start:start + batch_size], data.labels[start:start + batch_size]).to(device)
        with autocast(device, dtype):
            logits, labels = model.scored_logits(batch)
        right = (logits.argmax(-1) == labels) & torch.isfinite(logits).all(-1)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct, total = correct + int(right.sum()), total + labels.numel()
        rows = (batch.labels != IGNORE).nonzero()[:, 0]
        wrong_per_row = torch.bincount(rows[~right], minlength=len(batch))
        seq_correct += int((wrong_per_row == 0).sum())
    model.train()
    return Evaluation(correct / max(1, total), seq_correct / max(1, len(data)), loss_sum / max(1, total),
                      len(data), time.perf_counter() - started)
