"""What runs inside each Ray Train worker of `launch.launcher=ray` (disttrain.launchers.ray_cluster is the
driver): agree with the others on the job's store address (rank 0's node, its Ray address: Ray Train's
synchronization actor carries it, no torch process group of Ray's own), start the one worker entry point as a
child with the torchrun variables set and gloo on the interface of this node's address, pass a stop request
from the job's stop board on as SIGTERM, record the child's exit code, report rank 0's results."""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from disttrain.runtime.bootstrap import CPU_SLOTS, USER_SET
from disttrain.runtime.env import RUN_ID, WorkerEnv, free_port, is_loopback, transport_env
from disttrain.runtime.signals import PREEMPTED, dies_with_this_process

REPORTED = ("train_loss", "eval_auc", "eval_logloss", "eval_accuracy", "samples_per_s", "steps", "world_size")
TRANSPORT_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


class StopBoard:
    """The job's stop request and its training processes' exit codes, shared by the driver and the Ray workers
    (an async Ray actor of no CPU, owned by the driver)."""

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self._requested: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._requested is None:  # created on the actor's event loop
            self._requested = asyncio.Event()
        return self._requested

    async def request(self) -> None:
        self._event().set()

    async def wait(self) -> bool:
        await self._event().wait()
        return True

    async def record(self, rank: int, code: int) -> None:
        self.codes[rank] = code

    async def exit_codes(self) -> dict[int, int]:
        return dict(self.codes)


def _node_address() -> str:
    """This Ray worker's node address as the cluster knows it (`ray start --node-ip-address`); inside a worker,
    `ray.util.get_node_ip_address()` guesses from the routing table instead."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return next(node["NodeManagerAddress"] for node in ray.nodes() if node["NodeID"] == node_id)


def interface_of(address: str) -> str | None:
    """The network interface whose (first IPv4) address is `address`; None if none is (IPv6, a secondary
    address): gloo then falls back to the address the host name resolves to."""
    if is_loopback(address):
        return "lo"
    try:
        if ipaddress.ip_address(address).version != 4:
            return None
    except ValueError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR: struct ifreq, the sockaddr_in's address at bytes 20-23
                reply = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(reply[20:24]) == address:
                return name
    return None


def node_transport_env(socket_ifname: str, node: str, environ: Mapping[str, str]) -> dict[str, str]:
    """GLOO/NCCL_SOCKET_IFNAME of a training process: `launch.socket_ifname`, else what this Ray worker's
    environment sets (`ray job submit --runtime-env-json`), else the interface of its node's Ray address, where
    the other nodes reach it (the address the host name resolves to is often 127.0.0.1)."""
    if socket_ifname:
        return transport_env(socket_ifname)
    name = interface_of(node)
    return {k: name for k in TRANSPORT_VARIABLES if k not in environ} if name else {}


def _config_fd(text: str, name: str = "disttrain-config") -> int:
    """The config (or the job) in an anonymous in-memory file that the training process reads as /proc/self/fd/N
    (twice: it re-executes itself once): nothing on disk to clean up, however the Ray worker ends."""
    fd = os.memfd_create(name)
    with open(fd, "wb", closefd=False) as file:
        file.write(text.encode())
    return fd


def _run_training_process(cmd: list[str], env: dict[str, str], *, fds: tuple[int, ...], board) -> tuple[int, bool]:
    """Run the training process to its end; a stop request on the board reaches it as SIGTERM (finish the step,
    final checkpoint, exit 75). Returns its exit code and whether it was asked to stop."""
    import ray

    proc = subprocess.Popen(cmd, env=env, pass_fds=fds, preexec_fn=dies_with_this_process())  # the Ray worker dies: it gets SIGTERM, saves, exits
    stop = board.wait.remote()  # ready when a stop is requested, or when the driver (its owner) is gone
    try:
        while proc.poll() is None and not ray.wait([stop], timeout=0.25)[0]:
            pass
        asked = proc.poll() is None
        if asked:
            proc.send_signal(signal.SIGTERM)  # the training process keeps its own deadline (launch.stop_grace_s)
        return proc.wait(), asked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def train_loop(loop_config: dict) -> None:
    """Runs inside each Ray Train worker: agree on the store's address, run the training process, report."""
    import ray
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    node = _node_address()
    host, port = broadcast_from_rank_zero((node, free_port(node)) if rank == 0 else None)
    env = WorkerEnv(rank=rank, world_size=world, local_rank=ctx.get_local_rank(),
                    local_world_size=ctx.get_local_world_size(), master_addr=host, master_port=port)
    user_env = loop_config["user_env"]
    fds = [_config_fd(loop_config["config_yaml"])]
    args = ["--config", f"/proc/self/fd/{fds[0]}"]
    if loop_config.get("job_json"):  # the job the driver resolved (disttrain.runtime.job)
        fds.append(_config_fd(loop_config["job_json"], "disttrain-job"))
        args += ["--job", f"/proc/self/fd/{fds[1]}"]
    child_env = {**os.environ, **loop_config["driver_env"], **user_env, USER_SET: ",".join(user_env),
                 **node_transport_env(loop_config["socket_ifname"], node, os.environ), **env.to_environ(),
                 CPU_SLOTS: str(loop_config["cpus_per_worker"]), RUN_ID: loop_config["run_id"],
                 "DISTTRAIN_LAUNCHER": "ray", "PYTHONUNBUFFERED": "1"}
    board = loop_config["stop_board"]
    try:
        code, asked = _run_training_process(
            [sys.executable, "-m", "disttrain.worker", *args], child_env, fds=tuple(fds), board=board)
    finally:
        for fd in fds:
            os.close(fd)
    ray.get(board.record.remote(rank, code))
    if code == PREEMPTED or (asked and code != 0):
        return  # stopped on request: no restart, no report; the driver reads the exit codes
    if code != 0:
        raise RuntimeError(f"disttrain worker rank {rank} exited with code {code}")
    _report(rank, Path(loop_config["output_dir"]))


def _report(rank: int, out: Path) -> None:
    import ray.train

    metrics: dict = {"rank": rank}
    checkpoint = None
    if rank == 0:
        summary = json.loads((out / "summary.json").read_text())
        metrics.update({k: summary[k] for k in REPORTED if summary.get(k) is not None})
        checkpoint = ray.train.Checkpoint.from_directory(str(out))
    ray.train.report(metrics, checkpoint=checkpoint)
