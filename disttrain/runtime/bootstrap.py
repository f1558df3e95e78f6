"""Worker bootstrap: the first thing every worker does, under every launcher.

It computes this local rank's placement (pure), pins the process and binds its memory, then re-executes
itself once with the thread and allocator variables set, because OpenMP reads its variables and the dynamic
loader reads LD_PRELOAD only when a process starts. Affinity and memory policy survive the exec. The report
(plan, memory policy, allocator, variables set) travels to the re-executed process in the environment.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from disttrain.config import Config
from disttrain.runtime.affinity import THREAD_VARIABLES, Placement, apply_affinity, plan_placements
from disttrain.runtime.allocator import allocator_env
from disttrain.runtime.backend import resolve_backend
from disttrain.runtime.env import worker_env_from
from disttrain.runtime.topology import Topology, detect_topology

DONE = "DISTTRAIN_BOOTSTRAPPED"
REPORT = "DISTTRAIN_PLACEMENT"
USER_SET = "DISTTRAIN_USER_SET"  # launchers record which of WATCHED the user had set
CPU_SLOTS = "DISTTRAIN_CPUS_PER_WORKER"  # Ray: the CPU count the scheduler granted each worker
WATCHED = (*THREAD_VARIABLES, "OMP_PROC_BIND", "OMP_PLACES", "KMP_AFFINITY", "KMP_BLOCKTIME", "LD_PRELOAD",
           "MALLOC_CONF")


def user_set_variables(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The watched variables the user set. Launchers record the names before adding their own (torchrun,
    for one, sets OMP_NUM_THREADS=1 for its workers); without that record, whatever is set counts. `environ`: this process's environment unless given."""
    environ = os.environ if environ is None else environ
    if USER_SET in environ:
        names = [n for n in environ[USER_SET].split(",") if n]
    else:
        names = [n for n in WATCHED if n in environ]
    return {n: environ[n] for n in names if n in environ}


def launcher_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What a launcher adds to its workers' environment so they can tell the user's variables apart."""
    return {USER_SET: ",".join(n for n in WATCHED if n in environ)}


def resolve_nproc(cfg: Config, topology: Topology) -> int:
    """`launch.nproc_per_node=auto`: one rank per GPU (nccl), per NUMA node (affinity numa) or per socket."""
    nproc = cfg.launch.nproc_per_node
    if nproc != "auto":
        return int(nproc)
    if cfg.launch.backend == "nccl" and topology.gpus:
        return len(topology.gpus)
    return len(topology.nodes) if cfg.launch.affinity == "numa" else len(topology.sockets)


def placements_for(cfg: Config, topology: Topology, *, nproc: int, user_env: Mapping[str, str]) -> list[Placement]:
    return plan_placements(
        topology,
        nproc=nproc,
        mode=cfg.launch.affinity,
        use_logical_cores=cfg.launch.use_logical_cores,
        cpu_lists=cfg.launch.cpu_lists,
        threads_per_worker=cfg.launch.threads_per_worker,
        allow_oversubscribe=cfg.launch.allow_oversubscribe,
        use_gpus=cfg.launch.backend == "nccl",
        user_env=user_env,
    )


def local_slots(cfg: Config, topology: Topology, local_world_size: int, environ: Mapping[str, str]) -> int:
    """How many equal slices to cut this node into. Usually one per local rank; under Ray, whose workers may
    share a node with other jobs, slices of the CPU count each worker was granted (core affinity only)."""
    granted = int(environ.get(CPU_SLOTS, "0") or 0)
    if granted <= 0 or cfg.launch.affinity != "core":
        return local_world_size
    units = len(topology.cpus) if cfg.launch.use_logical_cores else len(topology.physical_cores())
    return max(local_world_size, units // granted)


def bootstrap(cfg: Config, environ: Mapping[str, str] = os.environ, *, reexec: bool = True) -> dict:
    """Place this worker; returns the report (after re-executing, in the new process)."""
    if environ.get(DONE) == "1" and REPORT in environ:
        return json.loads(environ[REPORT])
    cfg.launch.backend = resolve_backend(cfg.launch.backend)
    env = worker_env_from(environ)
    topology = detect_topology()
    user = user_set_variables(environ)
    placement = placements_for(cfg, topology, nproc=local_slots(cfg, topology, env.local_world_size, environ),
                               user_env=user)[env.local_rank]
    allocator, allocator_vars = allocator_env(cfg.launch.allocator, user_env=user)
    memory_policy = apply_affinity(placement, multi_node_machine=len(topology.nodes) > 1)
    to_set = {**placement.env, **allocator_vars}
    report = {
        "plan": placement.to_json(),
        "memory_policy": memory_policy,
        "allocator_requested": allocator,
        "set_env": to_set,
        "user_env": user,
        "threads": placement.threads,
    }
    new_env = {**environ, **to_set, DONE: "1", REPORT: json.dumps(report)}
    changed = any(environ.get(k) != v for k, v in to_set.items())
    if reexec and changed:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], new_env)
    os.environ.update({**to_set, DONE: "1", REPORT: new_env[REPORT]})
    return report
