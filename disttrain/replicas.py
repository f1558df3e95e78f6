"""Data-parallel replicas that are equal by construction, and a cheap check that they stay equal.

A user's model seeds nothing: each rank builds its own random dense weights. `broadcast_dense` makes every rank
take rank 0's dense parameters and buffers (everything outside `embeddings`) in one flat collective, as
DistributedDataParallel does when it wraps a model. The collective is a sum of the tensors' bytes, read as int64
words, where every rank but 0 contributes zeros: the sum is rank 0's bits exactly (negative zeros and NaN payloads
included), with any collectives that can sum (gloo, nccl, Horovod, shared memory) and no extra copy per rank.

`replica_checksums` gives one int64 per dense parameter (a position-weighted sum of its bits); the ranks compare
theirs with `check_replicas`, and a difference is one line naming the ranks and the first parameter that differs.
"""

from __future__ import annotations

import torch

from disttrain.errors import DisttrainError

WORD = torch.int64


def seed_rngs(seed: int) -> None:
    """torch's, numpy's and Python's global generators from `train.seed`, before the model is built: one config
    gives one model, whoever wrote it and however many ranks build it."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dense_tensors(model: torch.nn.Module, *, parameters: bool = True, buffers: bool = True,
                  ) -> list[tuple[str, torch.Tensor]]:
    """The replicated part of a parallelized model: its parameters and buffers outside `embeddings`."""
    out = [(n, p) for n, p in model.named_parameters() if not n.startswith("embeddings.")] if parameters else []
    if buffers:
        out += [(n, b) for n, b in model.named_buffers() if not n.startswith("embeddings.")]
    return out


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8)


@torch.no_grad()
def broadcast_dense(model: torch.nn.Module, comm, *, parameters: bool = True) -> int:
    """Every rank's dense parameters and buffers (`parameters=False`: buffers only) become rank 0's, bit for bit.
    Collective; returns the bytes sent."""
    tensors = [t for _, t in dense_tensors(model, parameters=parameters) if t.numel()]
    if comm.world_size == 1 or not tensors:
        return 0
    sizes = [t.numel() * t.element_size() for t in tensors]
    starts = [0]
    for size in sizes:  # each tensor at a word boundary, so its bytes view as its dtype
        starts.append(starts[-1] + -(-size // 8) * 8)
    words = torch.zeros(starts[-1] // 8, dtype=WORD, device=tensors[0].device)
    packed = words.view(torch.uint8)
    if comm.rank == 0:
        for tensor, start, size in zip(tensors, starts, sizes):
            packed[start : start + size].copy_(_as_bytes(tensor))
    comm.all_reduce_sum(words)
    for tensor, start, size in zip(tensors, starts, sizes):
        chunk = packed[start : start + size]
        if tensor.dtype == torch.bool:
            tensor.copy_(chunk.view(tensor.shape).bool())
        else:
            tensor.copy_(chunk.view(tensor.dtype).view(tensor.shape))
    return sum(sizes)


@torch.no_grad()
def replica_checksums(model: torch.nn.Module) -> tuple[list[str], torch.Tensor]:
    """The dense parameters' names and one int64 checksum each (a weighted sum of their bits: equal tensors give
    equal sums; a changed or moved word changes it, barring a collision)."""
    names, sums = [], []
    for name, param in dense_tensors(model, buffers=False):
        data = _as_bytes(param)
        pad = (-data.numel()) % 4
        if pad:
            data = torch.cat([data, data.new_zeros(pad)])
        bits = data.view(torch.int32).to(WORD)
        weights = torch.arange(bits.numel(), dtype=WORD, device=bits.device) % 65521 + 1
        names.append(name)
        sums.append(int((bits * weights).sum()) + bits.numel())
    return names, torch.tensor(sums, dtype=WORD)


def check_replicas(model: torch.nn.Module, comm, *, when: str) -> None:
    """Collective: every rank raises the same one-line error if any rank's dense parameters differ from rank 0's."""
    if comm.world_size == 1:
        return
    names, mine = replica_checksums(model)
    gathered = comm.all_gather_object(mine.tolist())
    problem = first_difference(names, gathered)
    if problem:
        raise DisttrainError(f"replicas differ {when}: {problem}; expected every rank to hold rank 0's dense "
                             "parameters (a model or hook that changes its weights on some ranks only?)")


def first_difference(names: list[str], gathered: list[list[int]]) -> str | None:
    """'rank 1 (and 2) differ from rank 0 first at parameter mlp.0.weight (3 of 6 parameters differ)', or None."""
    reference = gathered[0]
    ranks = [r for r, sums in enumerate(gathered) if sums != reference]
    if not ranks:
        return None
    differing = [i for i in range(len(names)) if any(g[i] != reference[i] for g in gathered)]
    others = f" (and {', '.join(map(str, ranks[1:]))})" if len(ranks) > 1 else ""
    return (f"rank {ranks[0]}{others} differ{'s' if len(ranks) == 1 else ''} from rank 0 first at parameter "
            f"{names[differing[0]]} ({len(differing)} of {len(names)} dense parameters differ)")
