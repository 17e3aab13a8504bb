"""Benchmark: does torch.compile pay for training the small models on a CPU, and does training the seeds
as one batched model (a torch.func ensemble) pay? Side by side, on the CPU standard MQAR shapes.

    python scripts/bench_training.py                        # vanilla, linear, mamba; 1 thread, 5 rounds
    python scripts/bench_training.py -v vanilla --rounds 9 --threads 2

Per variant: an eager model, the same model under torch.compile (its compilation reported apart: the
first two steps), and a 3-seed ensemble whose parameters are stacked (torch.func.stack_module_state)
and run with torch.vmap. Each round times `--steps` training steps (forward, backward, AdamW) of each
in turn, the order rotated per round. Printed: median ms per step and per seed with the 20th-80th
percentile, and the ratios to eager per round (median and range), so that load shows up as spread.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from suites import model as lm
from suites.tasks import IGNORE, train_batches
from suites.tasks.mqar import MQAR

SEEDS = 3
# The CPU standard MQAR experiment (suites.grids.CPU_STANDARD): 32 tokens, 8 pairs, vocabulary 64,
# d_model 64 in 8 heads, 2 layers, a 4-tap short convolution, batch 32.
TASK = dict(seq_len=32, kv_pairs=8, vocab=64)
D_MODEL, HEADS, LAYERS, BATCH, SHORT_CONV = 64, 8, 2, 32, 4


def make(variant: str, seed: int) -> lm.LanguageModel:
    torch.manual_seed(seed)
    heads = HEADS if lm.uses_rope(variant) else 2
    width = lm.mlp_width_for(variant, D_MODEL, heads, {})
    return lm.LanguageModel(variant, TASK["vocab"], D_MODEL, LAYERS, heads, width, {}, short_conv=SHORT_CONV)


def loss_of(model: lm.LanguageModel, batch) -> torch.Tensor:
    logits, labels = model.scored_logits(batch)
    return F.cross_entropy(logits, labels)


def single(variant: str, compiled: bool):
    model = make(variant, 0)
    opt = lm.optimizer_for(model, 1e-3, 0.1)
    loss = torch.compile(loss_of) if compiled else loss_of

    def step(batch):
        opt.zero_grad()
        loss(model, batch).backward()
        opt.step()
    return step


def ensemble(variant: str):
    """SEEDS models as one: stacked parameters, vmapped forward, one optimizer (what a batched run of the
    seeds would do; every member sees the same batch here, which costs the same as its own would)."""
    members = [make(variant, seed) for seed in range(SEEDS)]
    params, buffers = stack_module_state(members)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(members[0]).to("meta")
    opt = torch.optim.AdamW(params.values(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.1)

    def hidden(p, b, inputs):
        return functional_call(base, (p, b), (inputs,), strict=True)

    base.forward = base.hidden

    def step(batch):
        opt.zero_grad()
        h = torch.vmap(hidden, in_dims=(0, 0, None))(params, buffers, batch.inputs)  # (seeds, B, N, d)
        scored = batch.labels != IGNORE
        logits = torch.einsum("esd,evd->esv", h[:, scored], params["embedding.weight"])
        F.cross_entropy(logits.flatten(0, 1), batch.labels[scored].repeat(SEEDS)).backward()
        opt.step()
    return step


def timed(step, batches) -> float:
    started = time.perf_counter()
    for batch in batches:
        step(batch)
    return (time.perf_counter() - started) / len(batches)


def bench(variant: str, rounds: int, steps: int) -> None:
    it = train_batches(MQAR(**TASK), BATCH, 0)
    batches = [next(it) for _ in range(steps)]
    runners = {"eager": single(variant, False), "compiled": single(variant, True),
               "ensemble": ensemble(variant)}
    compile_s = {}
    for name, step in list(runners.items()):  # warm-up; the compiled model's first two steps compile it
        try:
            compile_s[name] = timed(step, batches[:2]) * 2
        except RuntimeError as e:  # e.g. an autograd.Function without setup_context cannot be vmapped
            print(f"{variant}: {name} not possible: {str(e).splitlines()[0][:160]}")
            del runners[name]
            compile_s[name] = float("nan")
    times = {name: [] for name in runners}
    order = list(runners)
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:
            times[name].append(timed(runners[name], batches))
    eager = np.array(times["eager"])
    print(f"{variant}: first two steps (compilation included) eager {compile_s['eager']:.2f} s, compiled "
          f"{compile_s['compiled']:.1f} s, ensemble {compile_s['ensemble']:.2f} s")
    for name, values in times.items():
        v = np.array(values) / (SEEDS if name == "ensemble" else 1)
        ratio = eager / v
        print(f"  {name:9s} {1e3 * statistics.median(v):7.1f} ms per step and seed "
              f"[{1e3 * np.percentile(v, 20):.1f}, {1e3 * np.percentile(v, 80):.1f}]   "
              f"speed-up vs eager {np.median(ratio):.2f}x (range {ratio.min():.2f}-{ratio.max():.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--variant", action="append", help="default: vanilla, linear, mamba")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the suites train with 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), MQAR {TASK}, d_model {D_MODEL}, "
          f"{LAYERS} layers, batch {BATCH}, {args.steps} steps x {args.rounds} rounds")
    for variant in args.variant or ["vanilla", "linear", "mamba"]:
        bench(variant, args.rounds, args.steps)


if __name__ == "__main__":
    main()
