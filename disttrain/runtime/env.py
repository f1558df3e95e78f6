"""The torchrun environment every launcher converges on (RANK, WORLD_SIZE, LOCAL_RANK, ...)."""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

RUN_ID = "DISTTRAIN_RUN_ID"  # set by launchers: one id per launch (per node), kept across restarts


@dataclass(frozen=True)
class WorkerEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def to_environ(self) -> dict[str, str]:
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def worker_env_from(environ: Mapping[str, str] = os.environ) -> WorkerEnv:
    """Read the torchrun variables (Horovod's under horovodrun); absent ones mean a single process."""
    if "RANK" not in environ and "HOROVOD_RANK" in environ:
        return WorkerEnv(
            rank=int(environ["HOROVOD_RANK"]),
            world_size=int(environ["HOROVOD_SIZE"]),
            local_rank=int(environ["HOROVOD_LOCAL_RANK"]),
            local_world_size=int(environ["HOROVOD_LOCAL_SIZE"]),
        )
    world = int(environ.get("WORLD_SIZE", "1"))
    return WorkerEnv(
        rank=int(environ.get("RANK", "0")),
        world_size=world,
        local_rank=int(environ.get("LOCAL_RANK", "0")),
        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", str(world))),
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=int(environ.get("MASTER_PORT", "0")),
    )


def process_environ() -> Mapping[str, str]:
    """This process's environment, for the torchrun variables and the ids a launcher sets (`RUN_ID`). What the
    process is asked to do is never read here: that is its job record (disttrain.runtime.job)."""
    return os.environ


def this_rank() -> str:
    """`RANK` as the launcher set it ("0" in a plain process), for prefixes of error lines."""
    return os.environ.get("RANK", "0")


def run_id() -> str:
    """The launch's id (`RUN_ID`, kept across restarts); "" in a process no launcher started."""
    return os.environ.get(RUN_ID, "")


def elastic_restart() -> tuple[str, bool]:
    """Under torchrun: (its restart count, whether its agent's store is to be used); ("0", False) elsewhere."""
    return (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"),
            os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True")


def socket_ifname() -> str | None:
    """The interface gloo was told to use (`GLOO_SOCKET_IFNAME`), None when it chooses itself."""
    return os.environ.get("GLOO_SOCKET_IFNAME")


def apply_transport_env(master_addr: str) -> None:
    """Keep gloo on the job's address (loopback too) in this process: `transport_env` set in its environment."""
    os.environ.update(transport_env("", master_addr))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback interface (a job that must stay on this machine)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_env(socket_ifname: str, master_addr: str = "", environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`launch.socket_ifname`: the interface gloo and nccl use between nodes. With none given and a loopback
    master address, the loopback interface, so that nothing a job opens listens beyond this machine (unless the
    user set the variables)."""
    if socket_ifname:
        return {"GLOO_SOCKET_IFNAME": socket_ifname, "NCCL_SOCKET_IFNAME": socket_ifname}
    if master_addr and is_loopback(master_addr):
        return {k: "lo" for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if k not in environ}
    return {}


def split_endpoint(text: str, *, key: str, default_port: int | None = None) -> tuple[str, int]:
    """`host:port` -> (host, port); a one-line ConfigError naming `key` otherwise."""
    from disttrain.errors import ConfigError

    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port or "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: got {text!r}, expected host:port")
    return host.strip("[]"), int(port)


def wait_for_tcp(host: str, port: int, timeout_s: float) -> bool:
    """Whether something accepts TCP connections at host:port within `timeout_s` (retrying refusals, since the
    other side may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(left, 5.0))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
