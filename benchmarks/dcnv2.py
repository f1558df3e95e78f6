"""DLRM-DCNv2 (MLPerf Training's DLRM) on 2 ranks: disttrain beside TorchRec's `DLRM_DCN`, fp32 and bf16, in one run.

Same shapes for both: dim 128, bottom 13-512-256-128, 3 low-rank cross layers of rank 512 over the 27 x 128
features, top 1024-1024-512-256-1, the 26 Criteo 1TB tables capped at --max-rows, bags of 1..--multi-hot-max
uniform ids, global batch 2048, SGD (fused into the backward for TorchRec's tables), table-wise sharding, 2 gloo
ranks pinned one per core, batches generated before timing and cycled. bf16: the dense layers under CPU bf16
autocast in both (fp32 tables, loss and master weights). Runs are interleaved in rounds so machine noise hits
all alike; medians are compared.

    python benchmarks/dcnv2.py --torchrec-python /work/peers/torchrec-venv/bin/python --rounds 2

TorchRec is optional (benchmarks/peers/README.md installs it in its own venv); without it, disttrain alone.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return out.stdout + out.stderr


def run_disttrain(args, precision: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "disttrain.cli", "launch", "model.name=dlrm_dcnv2", "model.flavor=mlperf",
              f"model.max_rows={args.max_rows}", f"data.multi_hot_max={args.multi_hot_max}",
              "data.distribution=uniform", "data.cycle_batches=8", "data.eval_batches=0",
              f"train.batch_size={args.batch_size}", f"train.steps={args.steps + args.warmup}",
              f"train.warmup_steps={args.warmup}", f"train.lr={args.lr}", "train.optimizer=sgd",
              f"train.precision={precision}", "sharding.strategy=table_wise", "launch.nproc_per_node=2",
              "run.tensorboard=false", "run.progress=false", f"run.output_dir={tmp}"])
        return json.loads((Path(tmp) / "summary.json").read_text())["samples_per_s"]


def run_torchrec(args, precision: str) -> float:
    text = _run([args.torchrec_python, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                 str(ROOT / "benchmarks/peers/torchrec_dlrm.py"), "--model", "dcnv2", "--max-rows",
                 str(args.max_rows), "--multi-hot-max", str(args.multi_hot_max), "--lr", str(args.lr),
                 "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                 "--precision", precision])
    return float(re.search(r"TORCHREC samples_per_s=([\d.]+)", text).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--max-rows", type=int, default=200_000, help="cap on every table's rows")
    parser.add_argument("--multi-hot-max", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--torchrec-python", default="", help="python of a venv with torchrec 1.8 + fbgemm-gpu-cpu 1.8")
    args = parser.parse_args()

    runners = {}
    for precision in ("fp32", "bf16"):
        runners[f"disttrain {precision}"] = lambda p=precision: run_disttrain(args, p)
        if args.torchrec_python:
            runners[f"TorchRec DLRM_DCN {precision}"] = lambda p=precision: run_torchrec(args, p)
    results: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(args.rounds):
        for name, runner in runners.items():
            results[name].append(runner())
            print(f"round {round_index + 1}: {name}: {results[name][-1]:,.0f} samples/s", flush=True)
    print(f"\nmedians over {args.rounds} interleaved rounds (samples/s; DCNv2 mlperf shapes, tables capped at "
          f"{args.max_rows:,} rows, bags of 1..{args.multi_hot_max} ids, global batch {args.batch_size}, "
          "2 ranks x 1 core):")
    for name, values in results.items():
        print(f"  {name:<28}{statistics.median(values):>10,.0f}")
    for precision in ("fp32", "bf16"):
        ours = statistics.median(results[f"disttrain {precision}"])
        peer = results.get(f"TorchRec DLRM_DCN {precision}")
        if peer:
            print(f"  {precision}: disttrain / TorchRec = {ours / statistics.median(peer):.2f}x")
    ratio = statistics.median(results["disttrain bf16"]) / statistics.median(results["disttrain fp32"])
    print(f"  disttrain bf16 / fp32 = {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
