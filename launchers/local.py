"""`launch.launcher=local`: start `launch.nproc_per_node` worker processes on this machine.

Each child gets the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, ...) and runs the same worker entry
point as every other launcher. If one worker fails, the others are stopped and its exit code is returned.

SIGTERM or SIGINT to the launcher (kill, docker stop, a scheduler's preemption, Ctrl-C) is forwarded to the
workers once (they run in their own session, so Ctrl-C reaches them only through here): they finish the step,
write a final checkpoint and exit with 75, which the launcher returns. A second signal, or workers still running
after `launch.stop_grace_s`, are killed. Workers also get SIGTERM if the launcher itself dies, even by SIGKILL
(a death signal set before they start), and then stop as on any request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from disttrain.config import Config
from disttrain.errors import ConfigError
from disttrain.launchers.forwarding import SignalForwarder
from disttrain.runtime.bootstrap import launcher_env
from disttrain.runtime.env import RUN_ID, WorkerEnv, free_port, transport_env
from disttrain.runtime.job import worker_arguments
from disttrain.runtime.signals import PREEMPTED, dies_with_this_process


def worker_envs(cfg: Config, *, master_port: int) -> list[WorkerEnv]:
    nproc, nnodes = cfg.launch.nproc_per_node, cfg.launch.nnodes
    return [
        WorkerEnv(
            rank=cfg.launch.node_rank * nproc + local_rank,
            world_size=nproc * nnodes,
            local_rank=local_rank,
            local_world_size=nproc,
            master_addr=cfg.launch.master_addr,
            master_port=master_port,
        )
        for local_rank in range(nproc)
    ]


def _stop(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_local(cfg: Config, config_path: str) -> int:
    """Run the workers; after a failure, restart them all up to `launch.max_restarts` times (they resume from
    the run's newest complete checkpoint)."""
    if cfg.launch.nnodes > 1 and not cfg.launch.master_port:
        raise ConfigError("launch.master_port: got 0, expected a fixed port shared by all nodes when launch.nnodes > 1")
    if cfg.launch.nnodes > 1 and cfg.launch.max_restarts:
        raise ConfigError(f"launch.max_restarts: got {cfg.launch.max_restarts}; restarts across nodes need a launcher "
                          "that coordinates them (launch.launcher=torchrun or ray); expected 0 with the local launcher")
    from disttrain.launchers.torchrun import wait_for_peers

    wait_for_peers(cfg)
    run_env = {RUN_ID: os.environ.get(RUN_ID) or uuid.uuid4().hex}
    for attempt in range(cfg.launch.max_restarts + 1):
        port = cfg.launch.master_port or free_port(cfg.launch.master_addr)
        code = _run_workers(cfg, config_path, port, {**run_env, "DISTTRAIN_RESTART_COUNT": str(attempt)})
        if code in (0, 130, PREEMPTED) or code >= 128 or attempt == cfg.launch.max_restarts:
            return code  # done, interrupted or stopped on request: never restarted
        where = (f"the newest complete checkpoint in {cfg.checkpoint.dir}" if cfg.checkpoint.dir
                 else "step 0 (checkpoint.dir is empty)")
        print(f"disttrain: restarting all workers ({attempt + 1}/{cfg.launch.max_restarts}), resuming from {where}",
              file=sys.stderr, flush=True)
    return code


def _run_workers(cfg: Config, config_path: str, port: int, extra_env: dict[str, str]) -> int:
    procs = []
    for env in worker_envs(cfg, master_port=port):
        # Pinning, threads and the allocator are the worker's own business (disttrain.runtime.bootstrap).
        child_env = {**os.environ, **launcher_env(), **transport_env(cfg.launch.socket_ifname, cfg.launch.master_addr),
                     **env.to_environ(), **extra_env, "DISTTRAIN_LAUNCHER": "local", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "disttrain.worker", *worker_arguments(config_path)]
        procs.append(subprocess.Popen(cmd, env=child_env, start_new_session=True, preexec_fn=dies_with_this_process()))
    with SignalForwarder(procs, grace_s=cfg.launch.stop_grace_s) as forwarder:
        while True:
            if forwarder.expired():
                forwarder.kill_all()
                return forwarder.exit_code()
            codes = [p.poll() for p in procs]
            finished = [c for c in codes if c is not None]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0, PREEMPTED)]
            if failed and not forwarder.signum:
                rank, code = failed[0]
                _stop(procs)
                print(f"disttrain: local rank {rank} exited with code {code}; stopped the other workers", file=sys.stderr)
                return code if code > 0 else 1
            if len(finished) == len(procs):
                if forwarder.signum or PREEMPTED in finished:
                    return _preempted(finished)
                return 0
            time.sleep(0.05)


def _preempted(codes: list[int]) -> int:
    """The job stopped on request: 75 when every worker saved and left in order, else the first other code."""
    other = [c for c in codes if c not in (0, PREEMPTED)]
    if other:
        print(f"disttrain: stopped on request; a worker exited with code {other[0]}", file=sys.stderr)
        return other[0] if other[0] > 0 else 128 - other[0]
    print(f"disttrain: stopped on request after a final checkpoint (exit code {PREEMPTED}); run it again with "
          "train.resume=auto to go on", file=sys.stderr)
    return PREEMPTED
