"""The pieces behind "nothing listens wider than the job's address" and "a stop request gives a final checkpoint"
under the Ray launcher, without a cluster: the job's store binds the master address itself (an address of this
machine) and falls back to torch's own store for any other; gloo's interface is that of the node's address; a
private local Ray starts on loopback with a token of its own; the driver posts the first SIGTERM once, stops at
once on a second or when the grace period is over, and turns the training processes' exit codes into the job's.
The same against real Ray processes: tests/test_ray.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from disttrain.collectives import _job_store
from disttrain.launchers.ray_cluster import DriverStop, _stopped, private_ray_env
from disttrain.launchers.ray_worker import StopBoard, interface_of, node_transport_env
from disttrain.runtime.env import WorkerEnv, free_port
from disttrain.runtime.signals import DUPLICATE_S
from tests.launch_helpers import clean_env

FOREIGN = "198.51.100.7"  # TEST-NET-2: never an address of this machine


def _own_address() -> str:
    """This machine's address towards the outside (what Ray takes for a node's address), not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.123", 9))  # no packet is sent: this only picks the route
        except OSError:
            pytest.skip("no route off this machine")
        address = sock.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("this machine has no address but loopback")
    return address


def _listening() -> set[tuple[str, int]]:
    psutil = pytest.importorskip("psutil")
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def test_rank_0_binds_the_store_to_the_nodes_own_address_not_every_interface():
    own = _own_address()
    store = _job_store(WorkerEnv(rank=0, world_size=1, master_addr=own, master_port=free_port(own)),
                       timedelta(seconds=10))
    assert store is not None
    port = store.port
    assert {(ip, p) for ip, p in _listening() if p == port} == {(own, port)}  # not 0.0.0.0 or ::
    del store


def test_a_master_address_that_is_a_name_is_left_to_torchs_own_store():
    timeout = timedelta(seconds=5)
    assert _job_store(WorkerEnv(rank=0, world_size=2, master_addr="node0", master_port=29500), timeout) is None
    assert _job_store(WorkerEnv(rank=1, world_size=2, master_addr="node0", master_port=29500), timeout) is None


def _ip_of(text: str) -> str:
    return text.split("%")[0]


RANK = """
import json, os, psutil, torch
from disttrain.collectives import _process_group
from disttrain.config import load_config
from disttrain.runtime.env import worker_env_from

env = worker_env_from()
comm = _process_group(env, load_config(None, ["launch.timeout_s=60"]), horovod=False)
total = torch.tensor([env.rank + 1.0])
comm.all_reduce_sum(total)
listening = [(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("inet") if c.status == "LISTEN"]
comm.barrier()
print(json.dumps({"sum": total.item(), "listening": listening}), flush=True)
os._exit(0)
"""


def test_two_ranks_on_the_nodes_address_agree_on_the_store_and_listen_there_only():
    """As under Ray on a cluster: MASTER_ADDR is the node's address (an IP address, not loopback). Every rank
    takes the same store (a store of one's own and torch's env:// store name their keys differently: ranks that
    mixed them waited for each other forever); rank 0's store and gloo listen on that address only."""
    pytest.importorskip("psutil")
    own = _own_address()
    port = free_port(own)
    procs = []
    for rank in range(2):
        env = {**clean_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": own, "MASTER_PORT": str(port),
               **node_transport_env("", own, {})}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["sum"] for r in results] == [3.0, 3.0]
    rank0 = {(_ip_of(ip), p) for ip, p in results[0]["listening"]}
    assert (own, port) in rank0 and {ip for ip, _ in rank0} == {own}, rank0


def test_gloo_uses_the_interface_of_the_nodes_address():
    own = _own_address()
    name = interface_of(own)
    assert name in {n for _, n in socket.if_nameindex()} and name != "lo"
    assert interface_of("127.0.0.1") == interface_of("::1") == "lo"
    assert interface_of(FOREIGN) is None and interface_of("fe80::1") is None and interface_of("node0") is None
    both = {"GLOO_SOCKET_IFNAME": name, "NCCL_SOCKET_IFNAME": name}
    assert node_transport_env("", own, {}) == both
    # launch.socket_ifname wins; what the worker's environment sets (a runtime env) is kept.
    assert node_transport_env("ib0", own, {}) == {"GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "ib0"}
    assert node_transport_env("", own, {"GLOO_SOCKET_IFNAME": "eth9"}) == {"NCCL_SOCKET_IFNAME": name}
    assert node_transport_env("", FOREIGN, {}) == {}


def test_a_private_local_ray_is_on_loopback_with_a_token_of_its_own():
    first, second = private_ray_env({}), private_ray_env({})
    assert first["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and first["RAY_AUTH_MODE"] == "token"
    assert len(first["RAY_AUTH_TOKEN"]) == 64 and first["RAY_AUTH_TOKEN"] != second["RAY_AUTH_TOKEN"]
    # An auth mode the user chose is theirs.
    assert private_ray_env({"RAY_AUTH_MODE": "disabled"}) == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class _Board:
    """StopBoard's handle as the driver sees it: `request.remote()`."""

    def __init__(self):
        self.requests = threading.Semaphore(0)
        self.request = self

    def remote(self):
        self.requests.release()


def test_the_driver_posts_the_first_signal_once_and_a_later_second_one_stops_at_once():
    board = _Board()
    with DriverStop(board, grace_s=60) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert board.requests.acquire(timeout=10)
        os.kill(os.getpid(), signal.SIGTERM)  # the same request (a scheduler and a shell both sending it)
        time.sleep(0.1)
        assert not board.requests.acquire(timeout=0.2) and stop.signum == signal.SIGTERM
        stop.first_at -= DUPLICATE_S + 1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_driver_stops_at_once_when_the_grace_period_is_over():
    with pytest.raises(KeyboardInterrupt), DriverStop(_Board(), grace_s=0, margin_s=0.2):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)


def test_the_stop_board_and_the_exit_code_of_a_stopped_job(capsys):
    async def scenario():
        board = StopBoard()
        waiting = asyncio.ensure_future(board.wait())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await board.request()
        assert await waiting
        await board.record(1, 75)
        await board.record(0, 75)
        return await board.exit_codes()

    assert _stopped(asyncio.run(scenario())) == 75
    assert "after a final checkpoint (exit code 75)" in capsys.readouterr().err
    assert _stopped({0: 75, 1: 143}) == 143
    assert _stopped({0: -9, 1: 75}) == 137
