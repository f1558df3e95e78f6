"""nn.Linear against disttrain's AlignedLinear on the DLRM kaggle dense part, in one process, interleaved step by
step (so machine noise hits both alike): bottom MLP, dot interaction over 26 pooled vectors, top MLP, forward +
backward at one rank's batch, fp32 and bf16 autocast. Prints the medians and their ratio.

    python benchmarks/aligned_linear.py --steps 150 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from disttrain.config import load_config
from disttrain.layers import align_linears
from disttrain.planning.build import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=1024, help="one rank's batch (the benchmark's 2048 / 2)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plain = build_model(load_config(None, ["model.flavor=kaggle", "model.max_rows=1000"]))
    aligned = copy.deepcopy(plain)
    align_linears(aligned)
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(args.batch, 13, generator=gen)
    pooled = [torch.randn(args.batch, 1, 16, generator=gen, requires_grad=True) for _ in plain.tables]

    def step(model, bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model.top(model.interact(model.bottom(dense), pooled)).squeeze(1)
        logits.float().sum().backward()
        return (time.perf_counter() - start) * 1000

    print(f"DLRM kaggle dense part, batch {args.batch}, {args.threads} thread(s), {args.steps} interleaved steps")
    for bf16 in (False, True):
        times: dict[str, list[float]] = {"nn.Linear": [], "AlignedLinear": []}
        for _ in range(5):  # warm-up (and oneDNN's kernel builds)
            step(plain, bf16), step(aligned, bf16)
        for _ in range(args.steps):
            times["nn.Linear"].append(step(plain, bf16))
            times["AlignedLinear"].append(step(aligned, bf16))
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"  {'bf16' if bf16 else 'fp32'}: nn.Linear {medians['nn.Linear']:.2f} ms, AlignedLinear "
              f"{medians['AlignedLinear']:.2f} ms per forward + backward "
              f"({medians['nn.Linear'] / medians['AlignedLinear']:.3f}x)")


if __name__ == "__main__":
    main()
