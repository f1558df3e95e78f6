"""The compute limit of a benchmark run: the model's matmul FLOPs per sample against the machine's GEMM rate.

`flops_per_sample(cfg)` counts the FLOPs of one training step (forward and backward) of the plain model with
torch's FLOP counter, on a small batch of the run's data with tiny tables (lookups are not FLOPs; the dense shapes
do not depend on the tables' rows). `gemm_gflops(dtype, threads)` times square matmuls of the MLPs' order of size
on `threads` threads. Their ratio is the samples/s the machine could reach if the step were nothing but its
matmuls at full speed: `disttrain bench` prints the share of it a run reached.
"""

from __future__ import annotations

import copy
import time

import torch

from disttrain.collectives import SingleProcess
from disttrain.models import model_spec
from disttrain.models.loss import training_loss
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
    return {"flops_per_sample": flops, "gemm_gflops": rate, "gemm_dtype": str(dtype).removeprefix("torch."),
            "threads": threads, "limit_samples_per_s": limit, "share": samples_per_s / limit if limit else None}
