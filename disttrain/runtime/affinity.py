"""Per-worker CPU pinning and thread counts: pure functions compute them, `apply_pinning` applies them.

Modes (`launch.affinity`):
- `none`: no pinning; threads = the CPUs this process may use, divided among the local ranks.
  e.g. 2 CPUs, 2 ranks -> each rank runs 1 thread anywhere.
- `core`: the CPUs this process may use are split into equal contiguous blocks, one per local rank.
  e.g. CPUs [0, 1, 2, 3], 2 ranks -> rank 0 gets [0, 1], rank 1 gets [2, 3].
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pinning:
    cpus: tuple[int, ...] | None  # None = not pinned
    threads: int
    env: dict[str, str] = field(default_factory=dict)  # variables set for this worker (never the user's)


def plan_pinning(
    *,
    available: list[int],
    local_rank: int,
    local_world_size: int,
    mode: str,
    threads_per_worker: int = 0,
    user_env: Mapping[str, str] | None = None,
) -> Pinning:
    user_env = user_env or {}
    available = sorted(available)
    if mode == "core":
        if local_world_size <= len(available):
            per_rank = len(available) // local_world_size
            cpus: tuple[int, ...] | None = tuple(available[local_rank * per_rank : (local_rank + 1) * per_rank])
        else:
            cpus = (available[local_rank % len(available)],)  # oversubscribed: ranks share cores
    else:
        cpus = None
    default_threads = len(cpus) if cpus else max(1, len(available) // max(local_world_size, 1))
    threads = threads_per_worker or default_threads
    env = {}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if name not in user_env:
            env[name] = str(threads)
    if "OMP_NUM_THREADS" in user_env:
        threads = int(user_env["OMP_NUM_THREADS"])
    return Pinning(cpus=cpus, threads=threads, env=env)


def apply_pinning(pinning: Pinning) -> None:
    """Side effects: CPU affinity of this process and torch's thread pools."""
    import torch

    if pinning.cpus is not None:
        try:
            os.sched_setaffinity(0, pinning.cpus)
        except OSError as exc:
            warnings.warn(f"could not pin to CPUs {list(pinning.cpus)}: {exc}", stacklevel=2)
    for name, value in pinning.env.items():
        os.environ.setdefault(name, value)
    torch.set_num_threads(pinning.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set (interop threads can be set once per process)
