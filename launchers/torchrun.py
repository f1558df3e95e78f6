"""`launch.launcher=torchrun`: run torchrun with the right flags; its workers run `disttrain.worker`.

Single node: `--standalone`. Several nodes: c10d rendezvous at `launch.rdzv_endpoint` when set, else a
static master (`launch.master_addr:launch.master_port`, `launch.node_rank`). Run the same command on every
node with its own `launch.node_rank`:

    node 0:  disttrain launch cluster_configs/torchrun_two_node.yaml launch.node_rank=0
    node 1:  disttrain launch cluster_configs/torchrun_two_node.yaml launch.node_rank=1

A node that does not host the rendezvous first waits up to `launch.timeout_s` for the endpoint to answer and
fails with one line if it does not.

torchrun runs through `disttrain.launchers.torchrun_agent` (its stores stay on loopback when the job's address
is loopback). SIGTERM or SIGINT to this launcher goes to torchrun once, which passes it to the workers and gives
them `launch.stop_grace_s` (its `--shutdown-timeout`) to write a final checkpoint; a second signal kills it.
If this launcher dies (even by SIGKILL), torchrun gets SIGTERM from the kernel and does the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from disttrain.config import Config
from disttrain.errors import ConfigError
from disttrain.launchers.forwarding import SignalForwarder
from disttrain.runtime.bootstrap import launcher_env
from disttrain.runtime.env import RUN_ID, is_loopback, split_endpoint, transport_env, wait_for_tcp
from disttrain.runtime.job import worker_arguments
from disttrain.runtime.signals import PREEMPTED, dies_with_this_process


def _is_host(cfg: Config) -> bool | None:
    """Whether this node hosts the c10d store: explicit, or None to let torchrun compare addresses."""
    value = cfg.launch.rdzv_is_host
    return None if value == "auto" else bool(value)


def torchrun_command(cfg: Config, config_path: str, *, run_id: str = "disttrain") -> list[str]:
    launch = cfg.launch
    cmd = [sys.executable, "-m", "disttrain.launchers.torchrun_agent", f"--nproc-per-node={launch.nproc_per_node}",
           f"--nnodes={launch.nnodes}", f"--shutdown-timeout={launch.stop_grace_s}"]
    if launch.rdzv_endpoint:
        split_endpoint(launch.rdzv_endpoint, key="launch.rdzv_endpoint")
        conf = [f"join_timeout={launch.timeout_s}"]
        if _is_host(cfg) is not None:
            conf.append(f"is_host={int(_is_host(cfg))}")
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={launch.rdzv_endpoint}", f"--rdzv-id={run_id}",
                f"--rdzv-conf={','.join(conf)}"]
    elif launch.nnodes == 1:
        cmd += ["--standalone"]
    else:
        if not launch.master_port:
            raise ConfigError("launch.master_port: got 0, expected a fixed port when launch.nnodes > 1 without "
                              "launch.rdzv_endpoint")
        cmd += [f"--node-rank={launch.node_rank}", f"--master-addr={launch.master_addr}",
                f"--master-port={launch.master_port}"]
    if launch.local_addr:
        cmd += [f"--local-addr={launch.local_addr}"]
    elif launch.nnodes == 1 and is_loopback(launch.master_addr):
        cmd += ["--local-addr=127.0.0.1"]  # the workers reach the agent's store on loopback
    if launch.max_restarts:
        cmd += [f"--max-restarts={launch.max_restarts}"]
    return cmd + ["-m", "disttrain.worker", *worker_arguments(config_path)]


def wait_for_peers(cfg: Config) -> None:
    """A node that joins someone else's rendezvous checks first that it answers, so a wrong address or a
    node 0 that never started is one line after `launch.timeout_s`, not a hang or a page of tracebacks."""
    launch = cfg.launch
    if launch.nnodes == 1:
        return
    if launch.rdzv_endpoint:
        if _is_host(cfg) or (_is_host(cfg) is None and launch.node_rank == 0):
            return
        key, (host, port) = "launch.rdzv_endpoint", split_endpoint(launch.rdzv_endpoint, key="launch.rdzv_endpoint")
    else:
        if launch.node_rank == 0:
            return
        key, host, port = "launch.master_addr", launch.master_addr, launch.master_port
    if not wait_for_tcp(host, port, launch.timeout_s):
        raise ConfigError(
            f"{key}: nothing answers at {host}:{port} within {launch.timeout_s} s (launch.timeout_s); start node 0 "
            "first, check the address and port, and that the network between the nodes allows the connection"
        )


def launch_torchrun(cfg: Config, config_path: str) -> int:
    wait_for_peers(cfg)
    # torchrun sets OMP_NUM_THREADS=1 for its workers; the recorded user variables let them override it.
    env = {**os.environ, **launcher_env(), **transport_env(cfg.launch.socket_ifname, _job_addr(cfg)),
           "DISTTRAIN_LAUNCHER": "torchrun", "PYTHONUNBUFFERED": "1", RUN_ID: os.environ.get(RUN_ID) or uuid.uuid4().hex}
    # The agent runs in its own session (Ctrl-C reaches it only through here) and gets SIGTERM if this process
    # dies, even by SIGKILL: it then stops its workers as on any request (they also watch the agent).
    proc = subprocess.Popen(torchrun_command(cfg, config_path), env=env, start_new_session=True,
                            preexec_fn=dies_with_this_process())
    with SignalForwarder([proc], grace_s=cfg.launch.stop_grace_s) as forwarder:
        while proc.poll() is None:
            if forwarder.expired():
                forwarder.kill_all()
                return forwarder.exit_code()
            time.sleep(0.05)
    code = proc.returncode
    if forwarder.signum:
        # torchrun ends with its own error after passing the stop on; the workers saved what they could
        print(f"disttrain: stopped on request; torchrun gave the workers {cfg.launch.stop_grace_s} s for a final "
              "checkpoint; run it again with train.resume=auto to go on", file=sys.stderr)
        return PREEMPTED
    if code != 0:
        print(f"disttrain: torchrun exited with code {code} (node_rank {cfg.launch.node_rank}); see the worker "
              "errors above", file=sys.stderr)
    return code


def _job_addr(cfg: Config) -> str:
    """The address the job's stores use: the rendezvous endpoint's host, else the master address."""
    if cfg.launch.rdzv_endpoint:
        return split_endpoint(cfg.launch.rdzv_endpoint, key="launch.rdzv_endpoint")[0]
    return cfg.launch.master_addr
