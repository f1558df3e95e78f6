"""The kaggle benchmark under every launcher, in one run: what each launcher costs.

Variants, interleaved in rounds (medians reported):
  local      disttrain's own launcher (2 ranks pinned one per core)
  torchrun   torchrun --standalone, same workers
  ray        Ray Train TorchTrainer on a private local Ray (2 workers x 1 CPU), each worker pinning itself
  horovod    horovodrun --gloo -np 2, embedding all-to-all and gradient all-reduce through Horovod's ops
             (skipped when Horovod is not installed: `make horovod`)

Per variant: steady-state samples/s (from summary.json, warm-up excluded), its ratio to local, the wall time
of the whole `disttrain launch` (start-up included) and the final loss (identical across launchers).

    python benchmarks/launchers.py --rounds 2 --steps 120
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = "bench_kaggle"  # a ready config (cluster_configs/bench_kaggle.yaml), by name
VARIANTS = {
    "local": ["launch.launcher=local"],
    "torchrun": ["launch.launcher=torchrun"],
    "ray": ["launch.launcher=ray", "launch.num_workers=2", "launch.cpus_per_worker=1"],
    "horovod": ["launch.launcher=horovod"],
}


def run(name: str, steps: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "disttrain.cli", "launch", str(BENCH), f"train.steps={steps}",
               "train.warmup_steps=20", f"run.output_dir={tmp}/out", f"launch.ray_storage={tmp}/ray",
               *VARIANTS[name]]
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
        return summary["samples_per_s"], wall, summary["train_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    names = [n for n in args.only if n != "horovod" or importlib.util.find_spec("horovod") is not None]
    results: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            results[name].append(run(name, args.steps))
            rate, wall, loss = results[name][-1]
            print(f"round {r + 1} {name:<9} {rate:>9,.0f} samples/s  wall {wall:5.1f} s  loss {loss:.6f}", flush=True)
    base = statistics.median(x[0] for x in results["local"]) if "local" in results else None
    print(f"\nkaggle DLRM, global batch 2048, {args.steps} steps, medians of {args.rounds} round(s)")
    print(f"{'launcher':<10}{'samples/s':>11}{'vs local':>10}{'wall s':>9}  final loss")
    for name, runs in results.items():
        rate = statistics.median(x[0] for x in runs)
        wall = statistics.median(x[1] for x in runs)
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"{name:<10}{rate:>11,.0f}{ratio:>10}{wall:>9.1f}  {runs[-1][2]:.6f}")
    if not importlib.util.find_spec("horovod"):
        print("horovod: not installed (make horovod)")
    print(json.dumps({n: [x[0] for x in runs] for n, runs in results.items()}))


if __name__ == "__main__":
    main()
