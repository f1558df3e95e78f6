"""disttrain vs TorchRec vs Facebook's reference DLRM on the kaggle shapes, in one run (`make compare`).

Runs are interleaved in rounds (disttrain, TorchRec, reference, disttrain, ...) so that machine noise hits
all of them alike; the medians are compared, and so are the best rounds (noise only ever slows a run down).
Same shapes for all: 26 Criteo-Kaggle tables capped at 1M rows, dim 16, bottom 13-512-256-64-16, top
512-256-1, global batch 2048, one id per table, SGD lr 0.1. disttrain runs as 2 ranks pinned one per core and
as 1 process on 2 threads, fp32 and bf16 (each with the share of the matmul roofline `disttrain bench`
measures); TorchRec as 2 ranks, DMP table-wise with fused SGD, with and without its TrainPipelineSparseDist.
The ratios of issue 21 are printed at the end with their targets.

    python benchmarks/compare_peers.py --torchrec-python /path/to/torchrec-venv/bin/python \\
        --dlrm-script /path/to/dlrm/dlrm_s_pytorch.py --rounds 3

Peers are optional; see benchmarks/peers/README.md to install them (in their own venv).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
KAGGLE_ROWS = "1460-583-1000000-1000000-305-24-12517-633-3-93145-5683-1000000-3194-27-14992-1000000-10-5652-2173-4-1000000-18-15-286181-105-142572"
PIN_WRAPPER = (
    "import os,sys,runpy; r=int(os.environ['LOCAL_RANK']); "
    "os.sched_setaffinity(0,{sorted(os.sched_getaffinity(0))[r]}); import torch; torch.set_num_threads(1); "
    "s=os.path.abspath(sys.argv[1]); sys.argv=sys.argv[1:]; sys.path.insert(0,os.path.dirname(s)); "
    "runpy.run_path(s,run_name='__main__')"
)


def _run(cmd: list[str], *, env: dict | None = None, cwd: str | None = None, timeout: int = 600) -> tuple[str, float]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return out.stdout + out.stderr, wall


def run_disttrain(args, *, overrides: list[str]) -> dict:
    """The run's summary (samples/s, eval AUC, roofline share from `disttrain bench`'s own GEMM measurement)."""
    with tempfile.TemporaryDirectory() as tmp:
        text, _ = _run([sys.executable, "-m", "disttrain.cli", "bench", f"train.steps={args.steps}",
                        f"train.warmup_steps={args.warmup}", f"run.output_dir={tmp}", *overrides])
        summary = json.loads((Path(tmp) / "summary.json").read_text())
        share = re.search(r"roofline_share=([\d.]+)", text)
        return {"samples_per_s": summary["samples_per_s"], "auc": summary["eval_auc"],
                "roofline": float(share.group(1)) if share else float("nan")}


def run_torchrec(args, *, jemalloc: bool = False, pipeline: bool = False) -> dict:
    env = {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "oversize_threshold:1,background_thread:false,dirty_decay_ms:-1,muzzy_decay_ms:-1"} if jemalloc else {}
    cmd = [args.torchrec_python, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
           str(ROOT / "benchmarks/peers/torchrec_dlrm.py"), "--steps", str(args.steps), "--warmup", str(args.warmup),
           *(["--pipeline"] if pipeline else [])]
    try:
        text, _ = _run(cmd, env=env)
    except RuntimeError as err:  # a peer run that dies (seen once: SIGABRT in rank 0) is run once more, said aloud
        print(f"TorchRec run failed, running it again: {str(err).splitlines()[0]} "
              f"{[line for line in str(err).splitlines() if 'Error' in line or 'error' in line][:3]}", flush=True)
        text, _ = _run(cmd, env=env)
    return {"samples_per_s": float(re.search(r"TORCHREC samples_per_s=([\d.]+)", text).group(1))}


def run_reference(args) -> tuple[float, float]:
    """(compute-only samples/s from its printed ms/it after warm-up, end-to-end samples/s)."""
    python = args.torchrec_python or sys.executable
    batches = args.reference_batches
    with tempfile.TemporaryDirectory() as tmp:
        text, wall = _run([python, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "--no-python",
                           python, "-c", PIN_WRAPPER, args.dlrm_script, "--dist-backend=gloo",
                           "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16", "--arch-mlp-top=512-256-1",
                           f"--arch-embedding-size={KAGGLE_ROWS}", "--data-generation=random", "--mini-batch-size=2048",
                           f"--num-batches={batches}", "--print-freq=5", "--print-time", "--num-indices-per-lookup=1",
                           "--num-indices-per-lookup-fixed=True", "--learning-rate=0.1", "--loss-function=bce"], cwd=tmp)
    ms = [float(x) for x in re.findall(r"([\d.]+) ms/it", text)]
    compute = 2048 / (statistics.median(ms[1:] or ms) / 1000)
    return compute, 2048 * batches / wall


ONE_PROCESS = ["launch.nproc_per_node=1", "launch.threads_per_worker=2"]
BF16 = ["train.precision=bf16"]
# (name, numerator, denominator, target): the ratios issue 33 asks for (issue 21's were 1.3, 1.2, 1.0, 1.0, 1.8).
RATIOS = [
    ("disttrain / TorchRec table-wise", "disttrain, 2 ranks", "TorchRec 1.8, 2 ranks (DMP table-wise, fused SGD)", 1.5),
    ("disttrain / TorchRec with its pipeline", "disttrain, 2 ranks", "TorchRec 1.8, 2 ranks, TrainPipelineSparseDist", 1.4),
    ("2 ranks / 1 process, fp32", "disttrain, 2 ranks", "disttrain, 1 process x 2 threads", 1.05),
    ("2 ranks / 1 process, bf16", "disttrain, 2 ranks, bf16", "disttrain, 1 process x 2 threads, bf16", 1.05),
    ("bf16 / fp32 (2 ranks)", "disttrain, 2 ranks, bf16", "disttrain, 2 ranks", 1.8),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--torchrec-python", default="", help="python of a venv with torchrec 1.8 + fbgemm-gpu-cpu 1.8")
    parser.add_argument("--dlrm-script", default="", help="path to facebookresearch/dlrm's dlrm_s_pytorch.py")
    parser.add_argument("--reference-batches", type=int, default=30)
    parser.add_argument("--extra", action="store_true", help="also disttrain with the system malloc and without "
                                                             "shared-memory collectives, and TorchRec with jemalloc")
    args = parser.parse_args()

    runners: dict[str, object] = {
        "disttrain, 2 ranks": lambda: run_disttrain(args, overrides=[]),
        "disttrain, 1 process x 2 threads": lambda: run_disttrain(args, overrides=ONE_PROCESS),
        "disttrain, 2 ranks, bf16": lambda: run_disttrain(args, overrides=BF16),
        "disttrain, 1 process x 2 threads, bf16": lambda: run_disttrain(args, overrides=ONE_PROCESS + BF16),
    }
    if args.extra:
        runners["disttrain, 2 ranks, system malloc"] = lambda: run_disttrain(args, overrides=["launch.allocator=off"])
        runners["disttrain, 2 ranks, loopback TCP (no shared memory)"] = lambda: run_disttrain(
            args, overrides=["launch.shared_memory=false"])
    if args.torchrec_python:
        runners["TorchRec 1.8, 2 ranks (DMP table-wise, fused SGD)"] = lambda: run_torchrec(args)
        runners["TorchRec 1.8, 2 ranks, TrainPipelineSparseDist"] = lambda: run_torchrec(args, pipeline=True)
        if args.extra:
            runners["TorchRec 1.8 + jemalloc"] = lambda: run_torchrec(args, jemalloc=True)
    results: dict[str, list[dict]] = {name: [] for name in runners}
    reference: list[tuple[float, float]] = []
    for round_index in range(args.rounds):
        for name, runner in runners.items():
            results[name].append(runner())
            print(f"round {round_index + 1}: {name}: {results[name][-1]['samples_per_s']:,.0f} samples/s", flush=True)
        if args.dlrm_script:
            reference.append(run_reference(args))
            print(f"round {round_index + 1}: reference DLRM: compute {reference[-1][0]:,.0f}, "
                  f"end to end {reference[-1][1]:,.0f} samples/s", flush=True)
    median = {name: statistics.median(r["samples_per_s"] for r in values) for name, values in results.items()}
    print(f"\nmedians over {args.rounds} interleaved rounds (kaggle DLRM, global batch 2048, tables capped at 1M rows, "
          "one id per table, SGD):")
    for name, values in results.items():
        extra = ""
        if "roofline" in values[0]:
            extra = (f"   {statistics.median(r['roofline'] for r in values):.0%} of the matmul roofline, "
                     f"eval AUC {statistics.median(r['auc'] for r in values):.4f}")
        print(f"  {name:<58}{median[name]:>10,.0f}{extra}")
    if reference:
        print(f"  {'reference DLRM, compute only (its ms/it)':<58}{statistics.median(r[0] for r in reference):>10,.0f}")
        print(f"  {'reference DLRM, end to end (incl. its data)':<58}{statistics.median(r[1] for r in reference):>10,.0f}")
    # Noise on a shared host only ever slows a run down, so each configuration's best round is the other estimate
    # of what it can do undisturbed; both are printed, and "met" is judged on each.
    best = {name: max(r["samples_per_s"] for r in values) for name, values in results.items()}
    print("\nratios of the medians, and of the best rounds (target):")
    for label, top, bottom, target in RATIOS:
        if top in median and bottom in median:
            shown = []
            for figures in (median, best):
                ratio = figures[top] / figures[bottom]
                text = f"{ratio:.3f}" if abs(ratio - target) < 0.005 else f"{ratio:.2f}"  # 0.997 is not 1.00
                shown.append(f"{text:>6}x {'met' if ratio >= target else 'NOT met':<7}")
            print(f"  {label:<44}{shown[0]}  best {shown[1]}  (target >= {target:.2f}x)")
    # Issue 33's roofline shares: fp32 >= 75%, bf16 >= 45% of the GEMM roofline `disttrain bench` prints.
    for name, target in (("disttrain, 2 ranks", 0.75), ("disttrain, 2 ranks, bf16", 0.45)):
        if name in results and "roofline" in results[name][0]:
            share = statistics.median(r["roofline"] for r in results[name])
            top = max(r["roofline"] for r in results[name])
            print(f"  {name + ': roofline share':<44}{share:>6.0%}  best {top:.0%}  (target >= {target:.0%}: "
                  f"{'met' if max(share, top) >= target else 'NOT met'})")
    if "disttrain, 2 ranks, bf16" in results:
        gap = statistics.median(r["auc"] for r in results["disttrain, 2 ranks, bf16"]) - \
            statistics.median(r["auc"] for r in results["disttrain, 2 ranks"])
        print(f"  {'bf16 eval AUC - fp32 eval AUC':<44}{gap:>+7.4f}  (within 0.002: {'yes' if abs(gap) <= 0.002 else 'NO'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
