"""Latency of one blocking all-to-all and all-reduce through disttrain's collectives interface, per transport.

    torchrun --standalone --nproc-per-node 2 benchmarks/collective_latency.py torch
    horovodrun --gloo -np 2 -H localhost:2 python benchmarks/collective_latency.py horovod

Rank 0 prints microseconds per call (mean of 200 after 20 warm-up calls) for three message sizes.
"""

from __future__ import annotations

import os
import sys
import time

import torch


def _comm(kind: str):
    if kind == "horovod":
        from disttrain.collectives import HorovodCollectives

        return HorovodCollectives()
    import torch.distributed as dist

    from disttrain.collectives import TorchCollectives

    dist.init_process_group("gloo")
    return TorchCollectives()


def _time(fn, calls: int = 200, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "torch"
    torch.set_num_threads(1)
    comm = _comm(kind)
    world = comm.world_size
    for floats in (256, 65536, 1 << 20):
        x, out = torch.randn(floats), torch.empty(floats)
        splits = [floats // world] * world
        a2a = _time(lambda: comm.all_to_all(out[: sum(splits)], x[: sum(splits)], splits, splits))  # noqa: B023
        ar = _time(lambda: comm.all_reduce_sum(x))  # noqa: B023
        if comm.rank == 0:
            print(f"{kind:<8} {floats * 4 // 1024:>6} KiB  all_to_all {a2a:8.0f} us  all_reduce {ar:8.0f} us", flush=True)
    comm.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
