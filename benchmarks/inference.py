"""Inference in one run: fp32 vs bf16 vs int8 recommendations/second (DLRM kaggle and DIEN at batch 128 and 1024),
DIEN latency at batch 1 with history 100, and onnxruntime vs PyTorch for Wide&Deep at batch 1024.

    python benchmarks/inference.py [--rounds 3] [--out runs/bench_inference]

Each model is trained for a few steps (the weights' values do not change the speed), quantized with
`disttrain quantize` (tuned on its synthetic held-out split) and exported with `disttrain export-onnx`; every
figure is then a `disttrain infer --json` process, in interleaved rounds, and the medians are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = {
    "dlrm": ["model.name=dlrm", "model.flavor=kaggle", "model.max_rows=1000000", "train.batch_size=2048",
             "train.optimizer=adagrad", "train.lr=0.05", "train.steps=10"],
    "dien": ["model.name=dien", "model.flavor=ai_matrix", "train.batch_size=128", "train.optimizer=adam",
             "train.lr=0.001", "data.synthetic_samples=12800", "train.steps=10"],
    "wide_deep": ["model.name=wide_deep", "model.flavor=intel", "train.batch_size=2048", "train.optimizer=adagrad",
                  "train.lr=0.05", "train.steps=10"],
}
# (model, mode, batch, precision, runtime, extra flags)
CASES = [
    *[("dlrm", "throughput", b, p, "torch", []) for b in (128, 1024) for p in ("fp32", "bf16", "int8")],
    ("dlrm", "throughput", 1024, "fp32", "torch", ["--nproc", "2"]),  # sharded over 2 worker processes
    *[("dien", "throughput", b, p, "torch", []) for b in (128, 1024) for p in ("fp32", "bf16", "int8")],
    *[("dien", "latency", 1, p, "torch", ["--exact-max-length", "100"]) for p in ("fp32", "bf16", "int8")],
    *[("wide_deep", "throughput", 1024, p, r, []) for p, r in (("fp32", "torch"), ("fp32", "onnxruntime"),
                                                                ("bf16", "torch"), ("int8", "torch"))],
]


def disttrain(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "disttrain.cli", *args], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"disttrain {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def prepare(out: Path) -> dict[str, dict[str, str]]:
    paths = {}
    for model, overrides in TRAIN.items():
        run = out / model
        disttrain("train", *overrides, "data.eval_batches=4", "run.progress=false", f"run.output_dir={run}",
                  f"checkpoint.dir={run / 'ck'}")
        disttrain("quantize", "--checkpoint", str(run / "ck"), "--out", str(run / "int8"))
        paths[model] = {"fp32": str(run / "ck"), "bf16": str(run / "ck"), "int8": str(run / "int8")}
        if model == "wide_deep":
            disttrain("export-onnx", str(run / "ck"), "--out", str(run / "model.onnx"))
            paths[model]["onnx"] = str(run / "model.onnx")
    return paths


def measure(paths, case) -> dict:
    model, mode, batch, precision, runtime, extra = case
    checkpoint = paths[model]["onnx" if runtime == "onnxruntime" else precision]
    iterations = "300" if mode == "latency" else ("100" if batch == 128 else "30")
    return json.loads(disttrain("infer", "--checkpoint", checkpoint, "--mode", mode, "--batch-size", str(batch),
                                "--precision", precision, "--runtime", runtime, "--iterations", iterations,
                                *extra, "--json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_inference"))
    args = parser.parse_args()
    out = Path(args.out)
    paths = prepare(out)
    for model in TRAIN:
        report = json.loads((Path(paths[model]["int8"]) / "quant_report.json").read_text())
        print(f"{model}: int8 layers {report['int8_layers']}/{report['total_layers']}, size "
              f"{report['bytes']['fp32'] / 2**20:.0f} -> {report['bytes']['int8'] / 2**20:.0f} MiB")
    runs: dict[tuple, list[dict]] = {}
    for r in range(args.rounds):
        for case in CASES:
            runs.setdefault(tuple(map(str, case)), []).append(measure(paths, case))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"\nmedians of {args.rounds} interleaved rounds, one process each (2 threads)")
    print(f"{'model':10} {'mode':11} {'batch':>5} {'precision':9} {'runtime':15} {'recs/s':>10} {'ms/batch':>9} "
          f"{'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'vs fp32':>8}")
    base = {}
    for case in CASES:
        results = runs[tuple(map(str, case))]
        model, mode, batch, precision, runtime, _ = case
        rate = statistics.median(x["recommendations_per_s"] for x in results)
        key = (model, mode, batch)
        base.setdefault(key, rate)
        runtime += ", 2 ranks" if "--nproc" in case[5] else ""
        line = f"{model:10} {mode:11} {batch:>5} {precision:9} {runtime:15} {rate:>10,.0f} "
        if mode == "latency":
            pcts = [statistics.median(x[k] for x in results) for k in ("p50_ms", "p90_ms", "p99_ms")]
            line += f"{'':>9} " + " ".join(f"{p:>7.2f}" for p in pcts)
        else:
            line += f"{statistics.median(x['ms_per_batch'] for x in results):>9.2f} " + " ".join(f"{'':>7}" for _ in range(3))
        print(line + f" {rate / base[key]:>7.2f}x")


if __name__ == "__main__":
    main()
