"""DeepFM and DIEN: disttrain vs deepctr-torch 0.3.0 on the same shapes, then 2-rank figures for every model.

Single process, both libraries with torch's default threads (all cores), runs interleaved in rounds so that
machine noise hits both alike; medians. Shapes (the issue's):
- DeepFM: 13 dense + 26 sparse fields, dim 16, 100,000 rows per table, batch 2048, DNN 1024-256-32, Adam;
  both on pre-generated batches (deepctr trains from in-memory arrays; disttrain with data.cycle_batches).
- DIEN: 543,060 users / 367,983 items / 1,601 categories, dim 18, history up to 100, batch 128, AUGRU with the
  auxiliary loss, Adam; both on the same generated Amazon-Books-shaped samples (disttrain's generator, seed 0),
  one pass over them.
"samples per CPU-second" divides by the process's CPU time over the timed part (every thread).

    python benchmarks/models_vs_deepctr.py --deepctr-python /path/to/venv/bin/python [--rounds 3] [--two-rank]

deepctr-torch needs its own venv: `pip install torch==2.13.0 deepctr-torch==0.3.0 requests`.
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
DEEPFM = ["model.name=deepfm", "model.flavor=deeprec", "model.table_sizes=[" + ",".join(["100000"] * 26) + "]",
          "train.batch_size=2048", "train.optimizer=adam", "train.lr=0.001", "data.cycle_batches=16"]
DIEN = ["model.name=dien", "model.flavor=ai_matrix", "train.batch_size=128", "train.optimizer=adam",
        "train.lr=0.001"]
TWO_RANK = {
    "dlrm": ["model.name=dlrm", "model.flavor=kaggle", "model.max_rows=1000000", "train.batch_size=2048",
             "train.optimizer=adagrad", "train.lr=0.05", "data.cycle_batches=16", "train.steps=60"],
    "wide_deep": ["model.name=wide_deep", "model.flavor=intel", "train.batch_size=2048", "train.optimizer=adagrad",
                  "train.lr=0.05", "data.cycle_batches=16", "train.steps=60"],
    "deepfm": DEEPFM + ["train.steps=40"],
    "dien": DIEN + ["data.synthetic_samples=12800", "train.epochs=1"],
}


def ours(overrides: list[str], *, verb: str = "train", eval_batches: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "disttrain.cli", verb, *overrides, f"data.eval_batches={eval_batches}",
               "run.progress=false",
               f"run.output_dir={tmp}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        return json.loads((Path(tmp) / "summary.json").read_text())


def deepctr(python: str, model: str, samples: int) -> dict:
    cmd = [python, str(ROOT / "benchmarks/peers/deepctr_models.py"), "--model", model, "--samples", str(samples)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    match = re.search(r"samples_per_s=([\d.]+) samples_per_cpu_s=([\d.]+)", out.stdout)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return {"samples_per_s": float(match.group(1)), "samples_per_cpu_s": float(match.group(2))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deepctr-python", help="a Python with deepctr-torch 0.3.0 (omit: disttrain figures only)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deepfm-steps", type=int, default=40)
    parser.add_argument("--dien-samples", type=int, default=12800)
    parser.add_argument("--two-rank", action="store_true", help="also 1 vs 2 ranks for dlrm, wide_deep, deepfm, dien")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {}
    dien_ours = DIEN + [f"data.synthetic_samples={args.dien_samples + 256}", "train.epochs=1"]
    for r in range(args.rounds):
        runs.setdefault("deepfm/disttrain", []).append(ours(DEEPFM + [f"train.steps={args.deepfm_steps}"]))
        runs.setdefault("dien/disttrain", []).append(ours(dien_ours))
        if args.deepctr_python:
            runs.setdefault("deepfm/deepctr", []).append(
                deepctr(args.deepctr_python, "deepfm", args.deepfm_steps * 2048))
            runs.setdefault("dien/deepctr", []).append(deepctr(args.deepctr_python, "dien", args.dien_samples))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("samples_per_s", "samples_per_cpu_s")}
           for k, v in runs.items()}
    print(f"single process, medians of {args.rounds} interleaved rounds")
    print(f"{'model':8} {'library':10} {'samples/s':>10} {'per CPU-s':>10} {'ratio':>7} {'ratio/CPU-s':>12}")
    for model in ("deepfm", "dien"):
        base = med.get(f"{model}/deepctr")
        for lib in ("disttrain", "deepctr"):
            m = med.get(f"{model}/{lib}")
            if not m:
                continue
            ratio = f"{m['samples_per_s'] / base['samples_per_s']:.1f}x" if base else "-"
            ratio_cpu = f"{m['samples_per_cpu_s'] / base['samples_per_cpu_s']:.1f}x" if base else "-"
            print(f"{model:8} {lib:10} {m['samples_per_s']:>10,.0f} {m['samples_per_cpu_s']:>10,.0f} {ratio:>7} "
                  f"{ratio_cpu:>12}")

    if args.two_rank:
        print("\n1 vs 2 ranks (disttrain launch, local launcher, one rank per core, sharded tables)")
        print(f"{'model':10} {'1 rank':>10} {'2 ranks':>10} {'speed-up':>9}  plan")
        for model, overrides in TWO_RANK.items():
            one = ours(overrides + ["launch.nproc_per_node=1"], verb="launch")
            two = ours(overrides + ["launch.nproc_per_node=2"], verb="launch")
            plan = ", ".join(sorted({t["type"] for t in two["plan"]["tables"]}))
            print(f"{model:10} {one['samples_per_s']:>10,.0f} {two['samples_per_s']:>10,.0f} "
                  f"{two['samples_per_s'] / one['samples_per_s']:>8.2f}x  {plan}")


if __name__ == "__main__":
    main()
