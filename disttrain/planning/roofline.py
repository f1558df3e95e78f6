"""The compute limit of a benchmark run: the model's matmul FLOPs per sample against the machine's GEMM rate.

`flops_per_sample(cfg)` counts the FLOPs of one training step (forward and backward) of the plain model with
torch's FLOP counter, on a small batch of the run's data with tiny tables (lookups are not FLOPs; the dense shapes
do not depend on the tables' rows). `gemm_gflops(dtype, threads)` times square matmuls of the MLPs' order of size
on `threads` threads. Their ratio is the samples/s the machine could reach if the step were nothing but its
matmuls at full speed: `disttrain bench` prints the share of it a run reached.

The sparse phases get their own bound (`phase_bounds`): the bytes a rank must move through memory per step for
its lookups (rows read, pooled vectors written; backward: their gradients read, row gradients written) and its row
update (row gradients read, rows and the optimizer's row state read and written), at the machine's copy bandwidth
(`memory_gbps`). Rows are scattered over large tables, so the real phases also wait on cache misses: the bound says
how far a phase is from moving its bytes at streaming speed, not that it can reach it.
"""

from __future__ import annotations

import copy
import time

import torch

from disttrain.collectives import SingleProcess
from disttrain.models import model_spec
from disttrain.models.loss import training_loss
from disttrain.optim import ELEMENT, optimizer_spec
from disttrain.planning.build import build_model, open_data

GEMM_SIZE = 1024

COUNT_BATCH = 64


def dense_model(cfg, batch_size: int):
    """(model, one batch of `batch_size` samples of the run's data, the model's spec) with tables of 8 rows: the
    config's dense part at full size (its shapes do not depend on the tables' rows), nearly nothing else."""
    small = copy.deepcopy(cfg)
    declared = build_model(small, embedding_device="meta").tables  # how many tables; nothing allocated
    small.model.table_sizes = [8] * len(declared)
    small.train.batch_size = batch_size
    small.model.dynamic_tables = []
    small.data.raw_ids = False
    model = build_model(small)
    batch = open_data(small, model.tables, comm=SingleProcess(), rank=0).batch(0)
    return model, batch, model_spec(small.model.name)


def flops_per_sample(cfg) -> float:
    """Matmul FLOPs (forward + backward) per training sample of this config's model."""
    from torch.utils.flop_counter import FlopCounterMode

    model, batch, spec = dense_model(cfg, COUNT_BATCH)
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = training_loss(model, batch, COUNT_BATCH, spec)
        loss.backward()
    return counter.get_total_flops() / COUNT_BATCH


def gemm_gflops(dtype: torch.dtype, threads: int, seconds: float = 1.0) -> float:
    """The machine's matmul rate on `threads` threads ([1024 x 1024] @ [1024 x 1024], best of a few runs)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(max(threads, 1))
    try:
        a = torch.randn(GEMM_SIZE, GEMM_SIZE).to(dtype)
        b = torch.randn(GEMM_SIZE, GEMM_SIZE).to(dtype)
        for _ in range(3):
            torch.mm(a, b)
        best, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b)
            best = max(best, 5 * 2 * GEMM_SIZE**3 / (time.perf_counter() - start))
        return best / 1e9
    finally:
        torch.set_num_threads(saved)


def memory_gbps(threads: int, seconds: float = 0.3, mib: int = 64) -> float:
    """The machine's copy bandwidth on `threads` threads (bytes read + written per second, best of a few copies of
    `mib` MiB), GB/s."""
    saved = torch.get_num_threads()
    torch.set_num_threads(max(threads, 1))
    try:
        src = torch.ones(mib << 18)  # fp32: mib MiB
        dst = torch.empty_like(src)
        dst.copy_(src)
        best, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            dst.copy_(src)
            best = max(best, 2 * src.numel() * 4 / (time.perf_counter() - start))
        return best / 1e9
    finally:
        torch.set_num_threads(saved)


def ids_per_sample(cfg) -> float:
    """Ids looked up per sample (all tables, all bags), counted on a batch of the run's data."""
    _, batch, _ = dense_model(cfg, COUNT_BATCH)
    return batch.sparse.values.numel() / COUNT_BATCH


def phase_bounds(cfg, ids_per_rank: float, gbps: float, state_words: float) -> dict[str, dict[str, float]]:
    """Per sparse phase: bytes one rank moves per step and the milliseconds that takes at `gbps` (see above).
    `state_words`: the optimizer's fp32 state per row element (0 for SGD, 1 for Adagrad, 2 for Adam)."""
    dim = build_model(copy.deepcopy(cfg), embedding_device="meta").tables[0].dim
    row = dim * (2 if cfg.model.embedding_dtype == "bf16" else 4)
    grad = dim * 4  # row gradients are fp32
    moved = {"embedding_lookup": ids_per_rank * (row + row + grad + grad),
             "optimizer": ids_per_rank * (grad + 2 * row + 2 * state_words * grad)}
    return {phase: {"bytes": n, "ms": n / (gbps * 1e9) * 1e3} for phase, n in moved.items()}


def run_dtype(cfg) -> torch.dtype:
    return torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32


def roofline(cfg, samples_per_s: float, threads: int, measured_before: float = 0.0) -> dict:
    """FLOPs per sample, GEMM GFLOP/s of the run's precision on the run's threads (the best of a measurement
    now and `measured_before`: a busy machine only lowers a measurement), the samples/s that allows, and the share
    reached."""
    dtype = run_dtype(cfg)
    flops = flops_per_sample(cfg)
    rate = max(gemm_gflops(dtype, threads), measured_before)
    limit = rate * 1e9 / flops if flops else float("nan")
    world = max(cfg.launch.nproc_per_node * cfg.launch.nnodes, 1)
    gbps = memory_gbps(max(threads // world, 1))  # one rank's threads: each rank moves its own bytes
    ids = ids_per_sample(cfg) * cfg.train.batch_size / world
    spec = optimizer_spec(cfg.train.optimizer)
    state = sum(1.0 if kind == ELEMENT else 0.0 for kind in spec.state.values())  # a row-wise word: negligible
    return {"flops_per_sample": flops, "gemm_gflops": rate, "gemm_dtype": str(dtype).removeprefix("torch."),
            "threads": threads, "limit_samples_per_s": limit, "share": samples_per_s / limit if limit else None,
            "memory_gbps_per_rank": gbps, "ids_per_rank_step": ids,
            "phase_bounds": phase_bounds(cfg, ids, gbps, state)}
