"""Where each local rank runs: CPUs, NUMA nodes, threads and the variables that go with them.

`plan_placements` is a pure function of a `Topology`; `apply_placement` applies one (affinity, memory
binding, torch threads). Physical cores come first; hyper-thread siblings only with `use_logical_cores`.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from disttrain.errors import ConfigError
from disttrain.ranges import even_split
from disttrain.runtime.topology import Topology, format_cpus, parse_cpu_list


class AffinityMode(str, Enum):
    """How local ranks are pinned (`launch.affinity`).

    - `none`: not pinned; threads = usable CPUs / local ranks. 2 CPUs, 2 ranks -> 1 thread each, anywhere.
    - `core`: physical cores split into equal contiguous blocks. 2 sockets x 4 cores, 2 ranks -> 4 cores each
      (one socket each); 4 ranks -> 2 cores each.
    - `numa`: one rank per NUMA node; more ranks split a node's cores, fewer ranks take several nodes.
      4 nodes x 2 cores, 8 ranks -> 1 core each, 2 ranks per node.
    - `socket`: the same by socket. 2 sockets, 2 ranks -> one socket each.
    - `explicit`: `launch.cpu_lists`, one CPU list per local rank, e.g. ["0-3", "4-7"].
    """

    NONE = "none"
    CORE = "core"
    NUMA = "numa"
    SOCKET = "socket"
    EXPLICIT = "explicit"


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Placement:
    local_rank: int
    cpus: tuple[int, ...] | None  # None = not pinned
    numa_nodes: tuple[int, ...]
    threads: int
    env: dict[str, str] = field(default_factory=dict)  # variables to set (never ones the user set)
    gpu: int | None = None
    shared: bool = False  # oversubscribed: these CPUs are shared with other ranks

    def to_json(self) -> dict:
        return {
            "local_rank": self.local_rank,
            "cpus": list(self.cpus) if self.cpus is not None else None,
            "numa_node": self.numa_nodes[0] if len(self.numa_nodes) == 1 else list(self.numa_nodes),
            "threads": self.threads,
            "env": self.env,
            "gpu": self.gpu,
            "shared": self.shared,
        }


def _units(topology: Topology, *, logical: bool) -> list[list[int]]:
    """Schedulable units in locality order: a physical core's CPUs (all siblings, or the first)."""
    return [cpus if logical else cpus[:1] for cpus in topology.physical_cores()]


def _split_groups(groups: list[list[list[int]]], nproc: int) -> list[list[list[int]]]:
    """Give `nproc` ranks the units of `groups` (nodes or sockets): whole groups, or a group's units split."""
    if nproc <= len(groups):
        return [[u for g in groups[a:b] for u in g] for a, b in even_split(len(groups), nproc)]
    out = []
    for group, (a, b) in zip(groups, even_split(nproc, len(groups))):
        ranks_here = b - a
        if ranks_here > len(group):
            raise ConfigError(
                f"launch.nproc_per_node: {nproc} ranks put {ranks_here} on a NUMA node/socket with {len(group)} "
                "cores; expected at most one rank per core"
            )
        out.extend(group[c:d] for c, d in even_split(len(group), ranks_here))
    return out


def _explicit(topology: Topology, cpu_lists: Sequence[int | str], nproc: int) -> list[list[list[int]]]:
    if len(cpu_lists) != nproc:
        raise ConfigError(f"launch.cpu_lists: got {len(cpu_lists)} lists for {nproc} local ranks; expected one per rank")
    known, seen = {c.cpu for c in topology.cpus}, {}
    out = []
    for rank, text in enumerate(cpu_lists):
        cpus = parse_cpu_list(str(text), where=f"launch.cpu_lists[{rank}]")
        missing = [c for c in cpus if c not in known]
        if missing or not cpus:
            raise ConfigError(
                f"launch.cpu_lists[{rank}]: {str(text)!r} names CPUs {format_cpus(missing) or '(none)'} that this machine "
                f"does not have (usable CPUs: {format_cpus(known)})"
            )
        for cpu in cpus:
            if cpu in seen:
                raise ConfigError(f"launch.cpu_lists[{rank}]: CPU {cpu} is also in launch.cpu_lists[{seen[cpu]}]; "
                                  "expected disjoint lists")
            seen[cpu] = rank
        out.append([[c] for c in cpus])
    return out


def _assign(topology, *, nproc, mode, logical, cpu_lists, allow_oversubscribe) -> tuple[list[list[list[int]]], bool]:
    units = _units(topology, logical=logical)
    if mode == AffinityMode.EXPLICIT:
        return _explicit(topology, cpu_lists, nproc), False
    if nproc > len(units):
        if not allow_oversubscribe:
            raise ConfigError(
                f"launch.nproc_per_node: {nproc} ranks but this machine has {len(units)} physical cores "
                f"(usable CPUs {format_cpus(c.cpu for c in topology.cpus)}); expected at most {len(units)}, or set "
                "launch.allow_oversubscribe=true to share cores"
            )
        return [[units[i % len(units)]] for i in range(nproc)], True
    if mode == AffinityMode.CORE:
        return [units[a:b] for a, b in even_split(len(units), nproc)], False
    key = (lambda c: c.node) if mode == AffinityMode.NUMA else (lambda c: c.socket)
    by_group: dict[int, list[list[int]]] = {}
    first_cpu = {c.cpu: c for c in topology.cpus}
    for unit in units:
        by_group.setdefault(key(first_cpu[unit[0]]), []).append(unit)
    return _split_groups([by_group[g] for g in sorted(by_group)], nproc), False


def thread_env(threads: int, *, pinned: bool, user_env: Mapping[str, str]) -> dict[str, str]:
    """OpenMP/MKL variables for a rank; a variable the user set is left alone."""
    env = {name: str(threads) for name in THREAD_VARIABLES}
    if pinned:
        # Intel OpenMP (when preloaded): compact thread placement, short spin. OMP_PROC_BIND is left unset on
        # purpose: GNU OpenMP would bind the main thread to one core, and every thread started after it
        # (data prefetch, gloo) would inherit that single core; the process mask already confines threads.
        env.update(KMP_AFFINITY="granularity=fine,compact,1,0", KMP_BLOCKTIME="1")
    return {k: v for k, v in env.items() if k not in user_env}


def plan_placements(
    topology: Topology,
    *,
    nproc: int,
    mode: str | AffinityMode = AffinityMode.CORE,
    use_logical_cores: bool = False,
    cpu_lists: Sequence[int | str] = (),
    threads_per_worker: int = 0,
    allow_oversubscribe: bool = False,
    use_gpus: bool = False,
    user_env: Mapping[str, str] | None = None,
) -> list[Placement]:
    """CPUs, NUMA nodes, threads and environment of each of `nproc` local ranks."""
    mode, user_env = AffinityMode(mode), user_env or {}
    if use_gpus and topology.gpus:
        return _gpu_placements(topology, nproc=nproc, logical=use_logical_cores, threads=threads_per_worker,
                               user_env=user_env)
    if mode == AffinityMode.NONE:
        threads = threads_per_worker or max(1, len(_units(topology, logical=use_logical_cores)) // nproc)
        env = thread_env(threads, pinned=False, user_env=user_env)
        return [Placement(r, None, tuple(topology.nodes), _user_threads(threads, user_env), env) for r in range(nproc)]
    assignment, shared = _assign(topology, nproc=nproc, mode=mode, logical=use_logical_cores, cpu_lists=cpu_lists,
                                 allow_oversubscribe=allow_oversubscribe)
    return [
        _pinned(topology, rank, units, threads=threads_per_worker, user_env=user_env, shared=shared)
        for rank, units in enumerate(assignment)
    ]


def _pinned(topology, rank, units, *, threads, user_env, gpu=None, shared=False) -> Placement:
    """A rank pinned to `units` (lists of CPUs): its NUMA nodes, thread count and variables."""
    cpus = tuple(sorted(c for unit in units for c in unit))
    threads = threads or len(cpus)
    env = thread_env(threads, pinned=True, user_env=user_env)
    nodes = tuple(sorted({topology.node_of(c) for c in cpus}))
    return Placement(rank, cpus, nodes, _user_threads(threads, user_env), env, gpu=gpu, shared=shared)


def _user_threads(threads: int, user_env: Mapping[str, str]) -> int:
    value = user_env.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else threads


def _gpu_placements(topology, *, nproc, logical, threads, user_env) -> list[Placement]:
    """Rank i drives GPU i and runs on cores of that GPU's NUMA node, shared out among its ranks."""
    if nproc > len(topology.gpus):
        raise ConfigError(f"launch.nproc_per_node: {nproc} ranks but {len(topology.gpus)} GPUs; expected at most "
                          f"{len(topology.gpus)}")
    units = _units(topology, logical=logical)
    node_units: dict[int, list[list[int]]] = {}
    for unit in units:
        node_units.setdefault(topology.node_of(unit[0]), []).append(unit)
    ranks_on: dict[int, list[int]] = {}
    for rank in range(nproc):
        ranks_on.setdefault(topology.gpus[rank].numa_node, []).append(rank)
    placements: dict[int, Placement] = {}
    for node, ranks in ranks_on.items():
        pool = node_units.get(node, units)  # unknown node (-1): any core
        for rank, (a, b) in zip(ranks, even_split(len(pool), len(ranks))):
            placements[rank] = _pinned(topology, rank, pool[a:b], threads=threads, user_env=user_env,
                                       gpu=topology.gpus[rank].index)
    return [placements[r] for r in range(nproc)]


# ----- side effects ----------------------------------------------------------------------------------------
_MPOL_BIND = 2
_SYS_SET_MEMPOLICY = {"x86_64": 238, "aarch64": 237}


def bind_memory(nodes: Sequence[int]) -> str:
    """Allocate only on `nodes` from now on (set_mempolicy MPOL_BIND); 'first-touch' if not possible."""
    number = _SYS_SET_MEMPOLICY.get(os.uname().machine)
    if not nodes or number is None:
        return "first-touch"
    mask = 0
    for node in nodes:
        mask |= 1 << node
    nodemask = ctypes.c_ulong(mask)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, _MPOL_BIND, ctypes.byref(nodemask), ctypes.c_ulong(64)) != 0:
        return "first-touch"
    return f"bind:{format_cpus(nodes)}"


def apply_affinity(placement: Placement, *, multi_node_machine: bool) -> str:
    """Pin this process (inherited by an exec) and bind its memory; returns the memory policy used."""
    if placement.cpus is None:
        return "default"
    os.sched_setaffinity(0, placement.cpus)
    return bind_memory(placement.numa_nodes) if multi_node_machine else "first-touch"


def apply_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process
