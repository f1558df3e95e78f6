"""`launch.launcher=horovod`: `horovodrun --gloo` starts the workers; they run `disttrain.worker` and talk
through Horovod's own ops (`disttrain.collectives.HorovodCollectives`): alltoall for the embedding exchange,
allreduce for dense gradients.

    launch.hosts   horovodrun -H (host:slots,...); empty = localhost:launch.nproc_per_node

horovodrun runs as `python -m disttrain.launchers.horovod` (`main`), which binds its rendezvous server to the
address the workers are given (127.0.0.1 on one machine; horovodrun's own binds every interface). It gets
SIGTERM if the launcher dies, even by SIGKILL, and then ends its workers as on any stop request.

Horovod is optional: `make horovod` builds it for this torch (launchers/build_horovod.sh).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import time

from disttrain.config import Config
from disttrain.errors import ConfigError, missing
from disttrain.launchers.forwarding import SignalForwarder
from disttrain.runtime.bootstrap import launcher_env
from disttrain.runtime.job import worker_arguments
from disttrain.runtime.signals import PREEMPTED, dies_with_this_process


def parse_hosts(cfg: Config) -> list[tuple[str, int]]:
    text = cfg.launch.hosts or f"localhost:{cfg.launch.nproc_per_node}"
    hosts = []
    for item in text.split(","):
        name, sep, slots = item.strip().rpartition(":")
        if not sep or not name or not slots.isdigit() or int(slots) <= 0:
            raise ConfigError(f"launch.hosts: got {text!r}, expected host:slots[,host:slots...] (e.g. node1:2,node2:2)")
        hosts.append((name, int(slots)))
    return hosts


def check_installed() -> None:
    if importlib.util.find_spec("horovod") is None or importlib.util.find_spec("horovod.torch") is None:
        raise missing("horovod", "launch.launcher: horovod")


def horovod_command(cfg: Config, config_path: str) -> list[str]:
    """horovodrun's command line, run by this module (`python -m disttrain.launchers.horovod`, see `main`)."""
    hosts = parse_hosts(cfg)
    np = sum(slots for _, slots in hosts)
    cmd = [sys.executable, "-m", "disttrain.launchers.horovod", "--gloo", "-np", str(np),
           "-H", ",".join(f"{h}:{s}" for h, s in hosts), "--start-timeout", str(cfg.launch.timeout_s)]
    if cfg.launch.socket_ifname:
        cmd += ["--network-interfaces", cfg.launch.socket_ifname]
    return cmd + [sys.executable, "-m", "disttrain.worker", *worker_arguments(config_path)]


def world_size(cfg: Config) -> int:
    return sum(slots for _, slots in parse_hosts(cfg))


def launch_horovod(cfg: Config, config_path: str) -> int:
    env = {**os.environ, **launcher_env(), "DISTTRAIN_LAUNCHER": "horovod", "PYTHONUNBUFFERED": "1"}
    # horovodrun gets SIGTERM if this process dies, even by SIGKILL; it then ends its workers, and its
    # middlemen end theirs if it dies itself (they watch it through a pipe).
    proc = subprocess.Popen(horovod_command(cfg, config_path), env=env, start_new_session=True,
                            preexec_fn=dies_with_this_process())
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


# horovodrun in this process, with its rendezvous server bound to the address it hands the workers: Horovod
# 0.28.1 binds every server it starts to all interfaces (`horovod.runner.util.network.find_port` binds
# ('', port)), whatever address the workers are told. On one machine that address is 127.0.0.1 (the interface
# holding it, `lo`); across machines, the first common interface's address.

def _find_port_on(host: str, server_factory):
    """Horovod's own search for a free port, binding `host` instead of every interface."""
    from horovod.runner.util import network

    return network.find_port(lambda addr: server_factory((host, addr[1])))


def _patch_rendezvous() -> None:
    from horovod.runner import gloo_run
    from horovod.runner.http import http_server

    launch_gloo = gloo_run.launch_gloo

    def launch_gloo_on_server_ip(command, exec_command, settings, nics, env, server_ip):
        http_server.find_port = functools.partial(_find_port_on, server_ip)
        return launch_gloo(command, exec_command, settings, nics, env, server_ip)

    gloo_run.launch_gloo = launch_gloo_on_server_ip


def main(argv: list[str] | None = None) -> int:
    """`python -m disttrain.launchers.horovod [horovodrun's arguments]`: horovodrun, rendezvous bound as above."""
    from horovod.runner import launch

    sys.argv = ["horovodrun", *(sys.argv[1:] if argv is None else argv)]
    _patch_rendezvous()
    launch.run_commandline()
    return 0


if __name__ == "__main__":  # Horovod's middlemen (multiprocessing spawn) import this module again: no side effects
    raise SystemExit(main())
