"""Serving a checkpoint sharded over the training workers (`disttrain infer --nproc N`), and the timing figures
every inference mode reports.

    throughput  back-to-back global batches, recommendations/second from the slowest rank's wall time
    latency     global batches of one request per rank, started together, each timed to the slowest rank
    accuracy    the final split's AUC, log loss and accuracy (the training run's final evaluation)
"""

from __future__ import annotations

import time

import numpy as np
import torch

from disttrain.engine.checkpointing import resume
from disttrain.engine.state import RunState

WARMUP = 3  # untimed batches before the timed ones
MODES = ("throughput", "latency", "accuracy")


def default_iterations(mode: str) -> int:
    return 200 if mode == "latency" else 20


def timing_figures(mode: str, seconds, batch_size: int) -> dict:
    """The figures of timed batches (`seconds`, one per batch of `batch_size` requests): throughput gives
    recommendations/second and ms per batch; latency the per-request p50 / p90 / p99 milliseconds."""
    seconds = np.asarray(seconds, dtype=np.float64)
    out = {"iterations": int(seconds.size), "recommendations_per_s": batch_size * seconds.size / float(seconds.sum())}
    if mode == "throughput":
        return out | {"ms_per_batch": float(seconds.mean() * 1e3)}
    p50, p90, p99 = np.percentile(seconds * 1e3, [50, 90, 99])
    return out | {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}


@torch.no_grad()
def serve(trainer, mode: str, iterations: int, exact_max_length: int = 0) -> dict | None:
    """The checkpoint in `train.resume`, sharded by this run's plan, in one of the modes; every rank takes its
    part of each global batch. Returns the figures on rank 0. Collective."""
    state = RunState()
    resume(trainer, state)
    if exact_max_length:
        trainer.data.exact_history = exact_max_length
    comm = trainer.comm
    out = {"step": state.step, "world_size": comm.world_size, "plan": trainer.plan.to_json(),
           "workers": comm.all_gather_object(trainer.worker_info())}
    if mode == "accuracy":
        metrics = trainer.evaluate(trainer.test_split)
        keys = ("auc", "logloss", "accuracy", "samples")
        return out | {"split": trainer.test_split, **{k: metrics[k] for k in keys}} if comm.rank == 0 else None
    trainer.model.eval()
    batches = [trainer.batch(i) for i in range(min(iterations + WARMUP, 64))]
    times = []
    for i in range(iterations + WARMUP):
        if mode == "latency" or i == WARMUP:
            comm.barrier()
        start = time.perf_counter()
        with trainer.autocast():
            trainer.model(batches[i % len(batches)].dense, batches[i % len(batches)].sparse)
        times.append(time.perf_counter() - start)
    comm.barrier()
    per_rank = np.asarray(comm.all_gather_object(times[WARMUP:]))  # [ranks, iterations]
    if comm.rank != 0:
        return None
    # throughput: the slowest rank's batches; latency: each request as long as its slowest rank took
    seconds = per_rank[per_rank.sum(axis=1).argmax()] if mode == "throughput" else per_rank.max(axis=0)
    return out | timing_figures(mode, seconds, trainer.global_batch)
