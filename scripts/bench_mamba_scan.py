"""Benchmark: mamba's chunked CPU scan against the loop it replaced, forward + backward, side by side.

    python scripts/bench_mamba_scan.py                      # the default shapes, 1 thread, 7 rounds
    python scripts/bench_mamba_scan.py --shape 4,128,16,1024 --rounds 15 --threads 2

A shape is batch,dim,d_state,L (dim = mamba's d_inner). Each round times the loop and the chunked scan
once each, in alternating order, on the same inputs (softplus delta, D, z and delta_bias as the layer
uses them), after one untimed warm-up call of each. Printed per shape: median and 20th-80th percentile
of each, and the speed-up (loop / chunked) as the median and range of the per-round ratios, so that
load from other processes shows up as spread rather than as a number.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from variants.mamba import selective_scan_loop, torch_selective_scan

DEFAULT_SHAPES = ("1,128,16,1024", "4,128,16,1024", "32,128,16,256")


def scan_inputs(batch: int, dim: int, d_state: int, length: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    inputs = dict(u=randn(batch, dim, length), delta=randn(batch, dim, length) * 0.5 - 1.0,
                  A=-torch.exp(randn(dim, d_state)), B=randn(batch, d_state, length),
                  C=randn(batch, d_state, length), D=randn(dim), z=randn(batch, dim, length),
                  delta_bias=randn(dim) * 0.1)
    return {k: t.requires_grad_() for k, t in inputs.items()}


def forward_backward_seconds(scan, inputs: dict[str, torch.Tensor], dy: torch.Tensor) -> float:
    for t in inputs.values():
        t.grad = None
    started = time.perf_counter()
    scan(**inputs, delta_softplus=True).backward(dy)
    return time.perf_counter() - started


def measure(shape: tuple[int, ...], rounds: int) -> None:
    inputs = scan_inputs(*shape)
    dy = torch.randn(shape[0], shape[1], shape[3])
    scans = {"loop": selective_scan_loop, "chunked": torch_selective_scan}
    for scan in scans.values():
        forward_backward_seconds(scan, inputs, dy)
    times = {name: [] for name in scans}
    for r in range(rounds):
        order = list(scans) if r % 2 == 0 else list(reversed(scans))
        for name in order:
            times[name].append(forward_backward_seconds(scans[name], inputs, dy))
    label = "batch={} dim={} d_state={} L={}".format(*shape)
    for name, seconds in times.items():
        p20, p50, p80 = np.percentile(np.array(seconds) * 1e3, [20, 50, 80])
        print(f"{label}  {name:8s} median {p50:8.1f} ms  (p20 {p20:.1f}, p80 {p80:.1f})")
    ratios = [a / b for a, b in zip(times["loop"], times["chunked"], strict=True)]
    print(f"{label}  speed-up median {statistics.median(ratios):.1f}x  "
          f"(range {min(ratios):.1f}x - {max(ratios):.1f}x over {rounds} rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", help="batch,dim,d_state,L (repeatable)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, forward + backward")
    for text in args.shape or DEFAULT_SHAPES:
        measure(tuple(int(x) for x in text.split(",")), args.rounds)


if __name__ == "__main__":
    main()
