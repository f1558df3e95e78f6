"""disttrain vs TorchRec vs Facebook's reference DLRM on the kaggle shapes, in one run.

Runs are interleaved in rounds (disttrain, TorchRec, reference, disttrain, ...) so that machine noise hits
all of them alike, and the medians are compared. Same shapes for all: 26 Criteo-Kaggle tables capped at 1M
rows, dim 16, bottom 13-512-256-64-16, top 512-256-1, global batch 2048, one id per table, SGD lr 0.1,
2 gloo ranks pinned one per core.

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


def run_disttrain(args, *, overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "disttrain.cli", "bench", f"train.steps={args.steps}",
              f"train.warmup_steps={args.warmup}", f"run.output_dir={tmp}", *overrides])
        return json.loads((Path(tmp) / "summary.json").read_text())["samples_per_s"]


def run_torchrec(args, *, jemalloc: bool) -> float:
    env = {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "oversize_threshold:1,background_thread:false,dirty_decay_ms:-1,muzzy_decay_ms:-1"} if jemalloc else {}
    text, _ = _run([args.torchrec_python, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
                    str(ROOT / "benchmarks/peers/torchrec_dlrm.py"), "--steps", str(args.steps), "--warmup",
                    str(args.warmup)], env=env)
    return float(re.search(r"TORCHREC samples_per_s=([\d.]+)", text).group(1))


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--torchrec-python", default="", help="python of a venv with torchrec 1.8 + fbgemm-gpu-cpu 1.8")
    parser.add_argument("--dlrm-script", default="", help="path to facebookresearch/dlrm's dlrm_s_pytorch.py")
    parser.add_argument("--reference-batches", type=int, default=30)
    args = parser.parse_args()

    runners: dict[str, object] = {
        "disttrain": lambda: run_disttrain(args, overrides=[]),
        "disttrain, system malloc": lambda: run_disttrain(args, overrides=["launch.allocator=off"]),
    }
    if args.torchrec_python:
        runners["TorchRec 1.8 (DMP table-wise, fused SGD)"] = lambda: run_torchrec(args, jemalloc=False)
        runners["TorchRec 1.8 + jemalloc"] = lambda: run_torchrec(args, jemalloc=True)
    results: dict[str, list[float]] = {name: [] for name in runners}
    reference: list[tuple[float, float]] = []
    for round_index in range(args.rounds):
        for name, runner in runners.items():
            results[name].append(runner())
            print(f"round {round_index + 1}: {name}: {results[name][-1]:,.0f} samples/s", flush=True)
        if args.dlrm_script:
            reference.append(run_reference(args))
            print(f"round {round_index + 1}: reference DLRM: compute {reference[-1][0]:,.0f}, "
                  f"end to end {reference[-1][1]:,.0f} samples/s", flush=True)
    base = statistics.median(results["disttrain"])
    print(f"\nmedians over {args.rounds} interleaved rounds (samples/s, global batch 2048, 2 ranks x 1 core):")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:<44}{median:>10,.0f}   disttrain / this = {base / median:.2f}x")
    if reference:
        compute = statistics.median(r[0] for r in reference)
        e2e = statistics.median(r[1] for r in reference)
        print(f"  {'reference DLRM, compute only (its ms/it)':<44}{compute:>10,.0f}   disttrain / this = {base / compute:.2f}x")
        print(f"  {'reference DLRM, end to end (incl. its data)':<44}{e2e:>10,.0f}   disttrain / this = {base / e2e:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
