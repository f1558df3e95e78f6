"""Worker placement on the kaggle benchmark, in one run: which pinning wins on this machine.

Variants, interleaved in rounds (medians reported):
  pinned       2 ranks x 1 thread, each pinned to its own core (disttrain's default, launch.affinity=core)
  unpinned     2 ranks x 1 thread, not pinned (launch.affinity=none)
  one-process  1 process x 2 threads (launch.nproc_per_node=1)
  run_cpu      2 ranks placed by Intel's launcher `python -m torch.backends.xeon.run_cpu` in its torchrun mode
               (cores split by LOCAL_RANK; numactl -C/-m, its OpenMP and jemalloc settings; needs an
               unversioned libjemalloc.so in <venv>/lib); disttrain's own placement off

    python benchmarks/pinning.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from disttrain.runtime.env import free_port

BENCH = "bench_kaggle"  # a ready config (cluster_configs/bench_kaggle.yaml), by name


def _summary(out_dir: str) -> float:
    return json.loads((Path(out_dir) / "summary.json").read_text())["samples_per_s"]


def launch(overrides: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "disttrain.cli", "launch", str(BENCH), f"train.steps={steps}",
               "train.warmup_steps=10", f"run.output_dir={tmp}", *overrides]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return _summary(tmp)


def _jemalloc_for_run_cpu() -> None:
    """run_cpu only finds an unversioned libjemalloc.so in <prefix>/lib or the plain system lib dirs."""
    target = Path(sys.prefix) / "lib" / "libjemalloc.so"
    system = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    if not target.exists() and system.exists():
        target.symlink_to(system)
        print(f"linked {target} -> {system} so that run_cpu can preload jemalloc", flush=True)


def run_cpu(steps: int) -> float:
    """Two workers started by Intel's launcher; disttrain's bootstrap told to place nothing itself."""
    _jemalloc_for_run_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        from disttrain.config import load_config, to_yaml

        cfg = load_config(BENCH, [f"train.steps={steps}", "train.warmup_steps=10", f"run.output_dir={tmp}",
                                  "launch.affinity=none", "launch.allocator=off"])
        config.write_text(to_yaml(cfg))
        shim = Path(tmp) / "worker.py"  # run_cpu runs scripts, not modules
        shim.write_text("import sys\nfrom disttrain.worker import main\nsys.exit(main())\n")
        port, procs = free_port(), []
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "DISTTRAIN_LAUNCHER": "run_cpu"}
            # Its torchrun mode: one instance over all cores, split by LOCAL_RANK / LOCAL_WORLD_SIZE.
            cmd = [sys.executable, "-m", "torch.backends.xeon.run_cpu", "--enable-jemalloc",
                   str(shim), "--config", str(config)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate(timeout=600)
            if p.returncode:
                raise RuntimeError(f"run_cpu worker failed:\n{err[-2000:]}")
        return _summary(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=70)
    args = parser.parse_args()
    variants = {
        "pinned: 2 ranks x 1 thread, own cores": lambda: launch(["launch.affinity=core"], args.steps),
        "unpinned: 2 ranks x 1 thread": lambda: launch(["launch.affinity=none"], args.steps),
        "one process x 2 threads": lambda: launch(["launch.nproc_per_node=1"], args.steps),
        "run_cpu-placed: 2 ranks (numactl, its jemalloc)": lambda: run_cpu(args.steps),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for name, variant in variants.items():
            results[name].append(variant())
            print(f"round {round_index + 1}: {name}: {results[name][-1]:,.0f} samples/s", flush=True)
    base = statistics.median(results["pinned: 2 ranks x 1 thread, own cores"])
    print(f"\nmedians over {args.rounds} interleaved rounds (kaggle DLRM, global batch 2048):")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:<50}{median:>10,.0f}   pinned / this = {base / median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
