"""Shared-memory collectives (one host): the same sums and exchanges as gloo's, the fallback for messages larger
than a slot, the sharded layer on top of them, and a peer that exits is named."""

from __future__ import annotations

import os

import pytest
import torch

from disttrain.shm_collectives import SPINS_BEFORE_YIELD, SharedMemoryCollectives, usable
from tests.dist_helpers import run_ranks


def _exchanges(comm, slot_bytes: int):
    # Each rank on one CPU, two CPUs at most: 3 ranks share a core (oversubscribed), 2 do not.
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, {cpus[comm.rank % len(cpus)]})
    shm = SharedMemoryCollectives(comm, slot_bytes=slot_bytes, timeout_s=60)
    assert usable(comm, torch.device("cpu"))
    report = [("patience", len(cpus), shm.spins_before_yield)]
    gen = torch.Generator().manual_seed(comm.rank)
    for step in range(6):  # several epochs: both slots, both header parities
        grads = torch.randn(1000 + 37 * step, generator=gen)
        expected = grads.clone()
        comm.all_reduce_sum(expected)
        shm.all_reduce_sum(grads)
        report.append(("all_reduce", step, (grads - expected).abs().max().item()))
        sends = [(comm.rank + 1) * (d + 1) * (step + 1) * 40 for d in range(comm.world_size)]
        recvs = [(s + 1) * (comm.rank + 1) * (step + 1) * 40 for s in range(comm.world_size)]
        data = torch.arange(sum(sends), dtype=torch.int64) + 1000 * comm.rank
        want = torch.empty(sum(recvs), dtype=torch.int64)
        comm.all_to_all(want, data, recvs, sends)
        got = torch.empty(sum(recvs), dtype=torch.int64)
        shm.all_to_all(got, data, recvs, sends)
        report.append(("all_to_all", step, int((got != want).sum())))
        rows = torch.randn(sum(sends) // 40, 3, generator=gen, dtype=torch.float64)  # dim-0 splits of 2-D tensors
        want2 = torch.empty(sum(recvs) // 40, 3, dtype=torch.float64)
        comm.all_to_all(want2, rows, [r // 40 for r in recvs], [s // 40 for s in sends])
        got2 = torch.empty_like(want2)
        shm.all_to_all(got2, rows, [r // 40 for r in recvs], [s // 40 for s in sends])
        report.append(("rows", step, int((got2 != want2).sum())))
    return report


@pytest.mark.parametrize(("world", "slot"), [(2, 64 << 20), (3, 64 << 20), (3, 9000)])
def test_shared_memory_sums_and_exchanges_equal_gloo(world, slot):
    """9000-byte slots: the larger exchanges of later steps (and rank 2's sends first) go through gloo, decided
    alike on every rank. Ranks that outnumber their CPUs yield the core from a wait's first spin; others spin a
    while first."""
    for report in run_ranks(world, _exchanges, slot):
        (_, cpus, patience), *report = report
        assert patience == (0 if world > cpus else SPINS_BEFORE_YIELD)
        for kind, step, diff in report:
            assert diff <= (1e-5 if kind == "all_reduce" else 0), (kind, step, diff)


def _train_parity(comm, slot_bytes):
    from tests.dist_helpers import compare_with_reference

    shm = SharedMemoryCollectives(comm, slot_bytes=slot_bytes, timeout_s=60)
    return compare_with_reference(shm, [(["model.flavor=debug", "train.batch_size=48", "sharding.strategy=row_wise",
                                          "train.optimizer=adagrad", "data.multi_hot_max=3"], 3),
                                         (["model.flavor=debug", "train.batch_size=48", "sharding.strategy=column_wise",
                                           "train.optimizer=sgd", "model.dynamic_tables=[]"], 3)])


@pytest.mark.parametrize("slot", [64 << 20, 1024])
def test_sharded_training_over_shared_memory_equals_one_process(slot):
    """The dense gradients are summed once after backward, in slot-sized pieces (1024 bytes: several)."""
    for report in run_ranks(2, _train_parity, slot):
        for case in report:
            assert case["logits"] < 1e-5 and case["dense"] < 1e-5 and case["embeddings"] < 1e-5, case


def _peer_exits(comm):
    shm = SharedMemoryCollectives(comm, timeout_s=60)
    if comm.rank == 1:
        os._exit(0)  # gone without a word
    try:
        shm.all_reduce_sum(torch.ones(10))
    except RuntimeError as exc:
        return str(exc)
    return "no error"


def test_a_peer_that_exits_is_named_within_seconds():
    import tempfile

    import torch.multiprocessing as mp

    from disttrain.runtime.env import free_port
    from tests.dist_helpers import _entry

    with tempfile.TemporaryDirectory() as out:
        try:
            mp.start_processes(_entry, args=(2, free_port(), out, _peer_exits, ()), nprocs=2, start_method="spawn")
        except mp.ProcessExitedException:
            pass
        result = torch.load(os.path.join(out, "rank0.pt"), weights_only=False)
    assert result["ok"] and "Connection closed by peer: rank 1" in result["result"], result
