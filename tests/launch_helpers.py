"""Running the real CLI from tests, and the config every launcher's parity test trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# One small job, run under every launcher: auto sharding mixes table-wise and row-wise tables.
PARITY = ["model.flavor=debug", "train.batch_size=64", "train.steps=16", "train.log_every=8", "train.seed=3",
          "data.eval_batches=2", "run.progress=false", "launch.nproc_per_node=2"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("OMP_NUM_THREADS", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def disttrain(*args: str, timeout: int = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disttrain.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or clean_env())


def summary(path: Path) -> dict:
    return json.loads((Path(path) / "summary.json").read_text())


def assert_same_training(got: dict, ref: dict) -> None:
    """Same config and seed, another launcher: the same run, to float rounding."""
    assert got["world_size"] == ref["world_size"] and got["steps"] == ref["steps"]
    assert got["plan"] == ref["plan"]
    assert abs(got["train_loss"] - ref["train_loss"]) <= 1e-6, (got["train_loss"], ref["train_loss"])
    assert abs(got["eval_auc"] - ref["eval_auc"]) <= 1e-6
    assert abs(got["eval_logloss"] - ref["eval_logloss"]) <= 1e-6
