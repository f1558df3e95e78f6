"""Checkpoint cost on the kaggle benchmark model (26 tables capped at 1M rows, dim 16: ~5.5M rows), in one run.

  save            2 ranks, table-wise, Adagrad (weights + one accumulator per weight): the final checkpoint
  load same       2 ranks, same plan (resume)
  load reshard    1 rank, row-wise (every table assembled from the other layout), and 3 ranks row-wise
  export          the unsharded single file
  torch.save      reference point: one torch.save of the same unsharded tensors (weights + accumulators)

    python benchmarks/checkpoint.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import disttrain

BENCH = Path(disttrain.__file__).parent / "configs" / "bench_kaggle.yaml"
COMMON = ["train.optimizer=adagrad", "train.lr=0.01", "data.eval_batches=1", "train.batch_size=2040"]


def launch(out: Path, *overrides: str) -> str:
    cmd = [sys.executable, "-m", "disttrain.cli", "launch", str(BENCH), *COMMON, f"run.output_dir={out}", *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return done.stdout


def seconds(pattern: str, log: str) -> float:
    return float(re.findall(pattern, log)[-1])


def main() -> None:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        root = Path(tmp)
        log = launch(root / "save", "train.steps=5", f"checkpoint.dir={root}/ck", "sharding.strategy=table_wise")
        save = seconds(r"checkpoint: \S+ \(([\d.]+) s\)", log)
        ck = next((root / "ck").glob("step_*"))
        size = sum(p.stat().st_size for p in ck.rglob("*") if p.is_file())
        rows = {}
        for name, extra in (("load same plan, 2 ranks", ["sharding.strategy=table_wise"]),
                            ("load reshard -> 1 rank row-wise", ["sharding.strategy=row_wise", "launch.nproc_per_node=1"]),
                            ("load reshard -> 3 ranks row-wise", ["sharding.strategy=row_wise", "launch.nproc_per_node=3",
                                                                   "launch.allow_oversubscribe=true"])):
            log = launch(root / "load", "train.steps=0", f"train.resume={ck}", *extra)
            rows[name] = seconds(r"resumed from \S+ at step \d+ \(([\d.]+) s\)", log)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "disttrain.cli", "export", str(ck), "--out", str(root / "m.pt")],
                       check=True, capture_output=True)
        export = time.perf_counter() - start
        state = torch.load(root / "m.pt", weights_only=True)["state_dict"]
        state = {**state, **{k + ".sum": torch.zeros_like(v) for k, v in state.items() if k.startswith("embeddings")}}
        start = time.perf_counter()
        torch.save(state, root / "plain.pt")
        with open(root / "plain.pt", "rb+") as f:
            import os

            os.fsync(f.fileno())
        plain = time.perf_counter() - start
    mib = size / 2**20
    print(f"kaggle model, tables capped at 1M rows, Adagrad: checkpoint {mib:,.0f} MiB on disk")
    print(f"{'operation':<36}{'seconds':>9}{'MiB/s':>9}")
    print(f"{'save (2 ranks, table-wise)':<36}{save:>9.2f}{mib / save:>9.0f}")
    for name, value in rows.items():
        print(f"{name:<36}{value:>9.2f}{mib / value:>9.0f}")
    print(f"{'export (process incl. start-up)':<36}{export:>9.2f}")
    print(f"{'plain torch.save of the same tensors':<36}{plain:>9.2f}{mib / plain:>9.0f}")
    print(f"save vs plain torch.save: {plain / save:.2f}x")


if __name__ == "__main__":
    main()
