"""`disttrain infer --nproc N`: a checkpoint served sharded over N local worker processes: the training workers,
with the same pinning, planner and resharding load (tables that fit no single worker are split). The workers
serve instead of training when `DISTTRAIN_SERVE` holds the request; rank 0 writes `infer.json`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from disttrain.engine.build import build_model
from disttrain.engine.checkpoint import META, find_checkpoint, remote, verify
from disttrain.engine.checkpoint.verify import read_meta
from disttrain.engine.sharded_serve import default_iterations
from disttrain.errors import ConfigError
from disttrain.launch import launch_as
from disttrain.serving.infer import check_exact_length, run_config
from disttrain.worker import SERVE


def run_sharded_inference(checkpoint: str, *, nproc: int, mode: str, config: str | None = None,
                          precision: str = "fp32", batch_size: int = 0, iterations: int = 0, exact_max_length: int = 0,
                          overrides: list[str] | None = None) -> dict:
    """The checkpoint sharded over `nproc` local worker processes (the same workers, plan and resharding as
    training; tables that fit no single worker are split), served in one of the modes."""
    if precision == "int8":
        raise ConfigError("--precision int8 with --nproc: the int8 model serves in one process; expected --nproc 1")
    path = find_checkpoint(str(checkpoint), "", key="--checkpoint")
    source = remote.source_of(path)  # on object storage each worker fetches what it serves
    try:
        stored = (read_meta(path) if remote.is_copy(path) else verify(path))["config"]
    finally:
        remote.release(path)
    cfg = run_config(stored, f"{source}/{META}", config, overrides or [])
    if mode == "latency":
        batch_size = nproc  # one request per rank at a time
    if batch_size:
        cfg.train.batch_size = batch_size
    if cfg.train.batch_size % nproc:
        raise ConfigError(f"--batch-size: got {cfg.train.batch_size}, expected a multiple of --nproc {nproc} "
                          "(each rank serves an equal part of every batch)")
    cfg.launch.launcher, cfg.launch.nnodes, cfg.launch.node_rank = "local", 1, 0
    cfg.launch.nproc_per_node, cfg.launch.max_restarts, cfg.launch.master_port = nproc, 0, 0
    cfg.train.resume, cfg.train.steps, cfg.train.precision = source, 0, precision
    check_exact_length(cfg, build_model(cfg, embedding_device="meta").tables, exact_max_length)
    cfg.checkpoint.dir, cfg.run.progress, cfg.run.tensorboard = "", False, False  # serving writes no events
    with tempfile.TemporaryDirectory(prefix="disttrain-infer-") as scratch:
        cfg.run.output_dir = scratch
        request = {"mode": mode, "iterations": iterations or default_iterations(mode),
                   "exact_max_length": exact_max_length}
        code = launch_as(cfg, SERVE, json.dumps(request))
        result_file = Path(scratch) / "infer.json"
        if code != 0 or not result_file.is_file():
            raise ConfigError(f"sharded inference over {nproc} workers failed (exit code {code}); their errors are above")
        served = json.loads(result_file.read_text())
    return {"checkpoint": str(path), "model": cfg.model.name, "flavor": cfg.model.flavor, "mode": mode,
            "precision": precision, "runtime": "torch", "batch_size": cfg.train.batch_size, **served}
