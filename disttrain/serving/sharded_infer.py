"""`disttrain infer --nproc N`: a checkpoint served sharded over N local worker processes: the training workers,
with the same pinning, planner and resharding load (tables that fit no single worker are split). The workers
serve instead of training when their job (`disttrain.runtime.job.Job`) holds the request; rank 0 writes
`infer.json`.

This process opens the checkpoint for its config only (`open_model(load=False)`): the launch pre-flight hashes its
files, once, and the workers load it."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

from disttrain.errors import ConfigError
from disttrain.planning.build import build_model
from disttrain.serving.infer import check_exact_length
from disttrain.serving.modes import default_iterations
from disttrain.serving.open import CHECKPOINT, open_model


def run_sharded_inference(checkpoint: str, launch_as, *, nproc: int, mode: str, config: str | None = None,
                          precision: str = "fp32", batch_size: int = 0, iterations: int = 0, exact_max_length: int = 0,
                          overrides: list[str] | None = None) -> dict:
    """The checkpoint sharded over `nproc` local worker processes (the same workers, plan and resharding as
    training; tables that fit no single worker are split), served in one of the modes. `launch_as(cfg, task,
    request)` starts the workers (`disttrain.launch.launch_as`; serving itself never starts processes)."""
    if precision == "int8":
        raise ConfigError("--precision int8 with --nproc: the int8 model serves in one process; expected --nproc 1")
    opened = open_model(checkpoint, overrides, kinds=(CHECKPOINT,), config=config, key="--checkpoint", load=False)
    cfg = copy.deepcopy(opened.config)  # the workers' config: the checkpoint's, set to serve
    if mode == "latency":
        batch_size = nproc  # one request per rank at a time
    if batch_size:
        cfg.train.batch_size = batch_size
    if cfg.train.batch_size % nproc:
        raise ConfigError(f"--batch-size: got {cfg.train.batch_size}, expected a multiple of --nproc {nproc} "
                          "(each rank serves an equal part of every batch)")
    cfg.launch.launcher, cfg.launch.nnodes, cfg.launch.node_rank = "local", 1, 0
    cfg.launch.nproc_per_node, cfg.launch.max_restarts, cfg.launch.master_port = nproc, 0, 0
    cfg.train.resume, cfg.train.steps, cfg.train.precision = opened.path, 0, precision  # on object storage: its URL
    check_exact_length(cfg, lambda: build_model(cfg, embedding_device="meta").tables, exact_max_length)
    cfg.checkpoint.dir, cfg.run.progress, cfg.run.tensorboard = "", False, False  # serving writes no events
    with tempfile.TemporaryDirectory(prefix="disttrain-infer-") as scratch:
        cfg.run.output_dir = scratch
        request = {"mode": mode, "iterations": iterations or default_iterations(mode),
                   "exact_max_length": exact_max_length}
        code = launch_as(cfg, "serve", request)
        result_file = Path(scratch) / "infer.json"
        if code != 0 or not result_file.is_file():
            raise ConfigError(f"sharded inference over {nproc} workers failed (exit code {code}); their errors are above")
        served = json.loads(result_file.read_text())
    return {"checkpoint": opened.path, "model": cfg.model.name, "flavor": cfg.model.flavor, "mode": mode,
            "precision": precision, "runtime": "torch", "batch_size": cfg.train.batch_size, **served}
