"""Running the real CLI from tests, and the config every launcher's parity test trains."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
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


def disttrain(*args: str, timeout: int = 300, env: dict[str, str] | None = None,
              cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disttrain.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or clean_env(), cwd=cwd)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`disttrain ARGS` in this process (`disttrain.cli.main`): exit code, stdout and stderr as a subprocess run
    would give them, without the seconds a new interpreter and torch import cost. For verbs that start no
    process (errors, plan, topology, export, infer, quantize, data): a run that would start workers or re-execute
    itself stops with an AssertionError instead, and the environment is restored afterwards."""
    from disttrain.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_environ, saved_execve, saved_popen = dict(os.environ), os.execve, subprocess.Popen.__init__

    def refuse(*_args, **_kwargs):
        raise AssertionError(f"disttrain {' '.join(args)} tried to start a process; use disttrain() for it")

    os.environ.update(env or {})
    os.execve, subprocess.Popen.__init__ = refuse, refuse
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse: --help, --version, usage errors
                code = exit_.code
    finally:
        os.execve, subprocess.Popen.__init__ = saved_execve, saved_popen
        os.environ.clear()
        os.environ.update(saved_environ)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def summary(path: Path) -> dict:
    return json.loads((Path(path) / "summary.json").read_text())


def assert_same_training(got: dict, ref: dict) -> None:
    """Same config and seed, another launcher: the same run, to float rounding."""
    assert got["world_size"] == ref["world_size"] and got["steps"] == ref["steps"]
    assert got["plan"] == ref["plan"]
    assert abs(got["train_loss"] - ref["train_loss"]) <= 1e-6, (got["train_loss"], ref["train_loss"])
    assert abs(got["eval_auc"] - ref["eval_auc"]) <= 1e-6
    assert abs(got["eval_logloss"] - ref["eval_logloss"]) <= 1e-6


# The examples of models of one's own (examples/), shortened; run from the repository's top as docs/models.md says.
EXAMPLES = {"two_tower": "examples/two_tower/config.yaml", "ranking": "examples/ranking/config.yaml"}
EXAMPLE_SHORT = ["train.steps=16", "train.log_every=8", "data.eval_batches=2", "run.tensorboard=false"]


def run_example(name: str, out, *extra: str, command: str = "launch") -> dict:
    result = disttrain(command, EXAMPLES[name], *EXAMPLE_SHORT, f"run.output_dir={out}", *extra, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return summary(out)
