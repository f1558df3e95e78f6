"""`launch.launcher=torchrun`: run torchrun with the right flags; its workers run `disttrain.worker`.

Single node: `--standalone`. Several nodes: c10d rendezvous at `launch.rdzv_endpoint` when set, else a
static master (`launch.master_addr:launch.master_port`, `launch.node_rank`). Run the same command on every
node with its own `launch.node_rank`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from disttrain.config import Config
from disttrain.errors import ConfigError
from disttrain.runtime.bootstrap import launcher_env


def torchrun_command(cfg: Config, config_path: str, *, run_id: str = "disttrain") -> list[str]:
    launch = cfg.launch
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}",
           f"--nnodes={launch.nnodes}"]
    if launch.rdzv_endpoint:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={launch.rdzv_endpoint}", f"--rdzv-id={run_id}",
                f"--node-rank={launch.node_rank}"]
    elif launch.nnodes == 1:
        cmd += ["--standalone"]
    else:
        if not launch.master_port:
            raise ConfigError("launch.master_port: got 0, expected a fixed port when launch.nnodes > 1 without "
                              "launch.rdzv_endpoint")
        cmd += [f"--node-rank={launch.node_rank}", f"--master-addr={launch.master_addr}",
                f"--master-port={launch.master_port}"]
    return cmd + ["-m", "disttrain.worker", "--config", config_path]


def launch_torchrun(cfg: Config, config_path: str) -> int:
    # torchrun sets OMP_NUM_THREADS=1 for its workers; the recorded user variables let them override it.
    env = {**os.environ, **launcher_env(), "DISTTRAIN_LAUNCHER": "torchrun", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(torchrun_command(cfg, config_path), env=env).returncode
