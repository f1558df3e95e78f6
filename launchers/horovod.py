"""`launch.launcher=horovod`: `horovodrun --gloo` starts the workers; they run `disttrain.worker` and talk
through Horovod's own ops (`disttrain.collectives.HorovodCollectives`): alltoall for the embedding exchange,
allreduce for dense gradients.

    launch.hosts   horovodrun -H (host:slots,...); empty = localhost:launch.nproc_per_node

Horovod is optional: `make horovod` builds it for this torch (launchers/build_horovod.sh).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from disttrain.config import Config
from disttrain.errors import ConfigError, install_hint, missing
from disttrain.launchers.forwarding import SignalForwarder
from disttrain.runtime.bootstrap import launcher_env
from disttrain.runtime.signals import PREEMPTED


def parse_hosts(cfg: Config) -> list[tuple[str, int]]:
    text = cfg.launch.hosts or f"localhost:{cfg.launch.nproc_per_node}"
    hosts = []
    for item in text.split(","):
        name, sep, slots = item.strip().rpartition(":")
        if not sep or not name or not slots.isdigit() or int(slots) <= 0:
            raise ConfigError(f"launch.hosts: got {text!r}, expected host:slots[,host:slots...] (e.g. node1:2,node2:2)")
        hosts.append((name, int(slots)))
    return hosts


def horovodrun_path() -> str:
    if importlib.util.find_spec("horovod") is None or importlib.util.find_spec("horovod.torch") is None:
        raise missing("horovod", "launch.launcher: horovod")
    beside = Path(sys.executable).parent / "horovodrun"
    found = str(beside) if beside.exists() else shutil.which("horovodrun")
    if not found:
        raise ConfigError(f"launch.launcher: horovod is installed but horovodrun is not on PATH; expected it beside "
                          f"{sys.executable}, or reinstall: {install_hint('horovod')}")
    return found


def horovod_command(cfg: Config, config_path: str, runner: str = "horovodrun") -> list[str]:
    hosts = parse_hosts(cfg)
    np = sum(slots for _, slots in hosts)
    cmd = [runner, "--gloo", "-np", str(np), "-H", ",".join(f"{h}:{s}" for h, s in hosts),
           "--start-timeout", str(cfg.launch.timeout_s)]
    if cfg.launch.socket_ifname:
        cmd += ["--network-interfaces", cfg.launch.socket_ifname]
    return cmd + [sys.executable, "-m", "disttrain.worker", "--config", config_path]


def world_size(cfg: Config) -> int:
    return sum(slots for _, slots in parse_hosts(cfg))


def launch_horovod(cfg: Config, config_path: str) -> int:
    cmd = horovod_command(cfg, config_path, horovodrun_path())
    env = {**os.environ, **launcher_env(), "DISTTRAIN_LAUNCHER": "horovod", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    # A stop request goes to horovodrun once, which passes it to its workers (they finish the step and save).
    with SignalForwarder([proc], grace_s=cfg.launch.stop_grace_s) as forwarder:
        while proc.poll() is None:
            if forwarder.expired():
                forwarder.kill_all()
                return forwarder.exit_code()
            time.sleep(0.05)
    code = proc.returncode
    if forwarder.signum:
        print("disttrain: stopped on request; run it again with train.resume=auto to go on", file=sys.stderr)
        return PREEMPTED
    if code != 0:
        print(f"disttrain: horovodrun exited with code {code}; see the worker errors above", file=sys.stderr)
    return code
