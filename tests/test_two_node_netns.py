"""torchrun across two "machines": two network namespaces joined by a veth pair that this test creates, one
torchrun node in each, c10d rendezvous hosted by node 0, gloo over the veth interface. Where namespaces
cannot be made (no root, no `ip`), the same two nodes run on loopback and the reason is logged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest

from tests.launch_helpers import PARITY, assert_same_training, clean_env, summary

SUBNET = "10.231.{}.{}"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class Namespaces:
    """Two namespaces, `veth` ends inside them, addresses .1 and .2; removed on exit."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.names = [f"dt{tag}n0", f"dt{tag}n1"]
        self.ifaces = [f"dt{tag}v0", f"dt{tag}v1"]
        net = tag % 250 + 1
        self.addrs = [SUBNET.format(net, 1), SUBNET.format(net, 2)]

    def __enter__(self):
        steps = [
            ["netns", "add", self.names[0]], ["netns", "add", self.names[1]],
            ["link", "add", self.ifaces[0], "type", "veth", "peer", "name", self.ifaces[1]],
        ]
        for i in (0, 1):
            steps += [
                ["link", "set", self.ifaces[i], "netns", self.names[i]],
                ["-n", self.names[i], "addr", "add", f"{self.addrs[i]}/24", "dev", self.ifaces[i]],
                ["-n", self.names[i], "link", "set", self.ifaces[i], "up"],
                ["-n", self.names[i], "link", "set", "lo", "up"],
            ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                self.__exit__()
                raise OSError(f"`ip {' '.join(step)}` failed: {done.stderr.strip()}")
        return self

    def __exit__(self, *exc):
        for name in self.names:
            _ip("netns", "delete", name)  # deleting a namespace removes its veth end, and with it the pair

    def prefix(self, node: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[node]]


def _make_namespaces() -> tuple[Namespaces | None, str]:
    if not shutil.which("ip"):
        return None, "the `ip` tool is missing"
    if os.geteuid() != 0:
        return None, "creating network namespaces needs root"
    try:
        return Namespaces().__enter__(), ""
    except OSError as exc:
        return None, str(exc)


@pytest.mark.slow
def test_torchrun_two_nodes_in_network_namespaces(local_reference, tmp_path):
    netns, reason = _make_namespaces()
    if netns is None:
        warnings.warn(f"two-node torchrun runs on loopback instead of network namespaces: {reason}", stacklevel=1)
    try:
        addrs = netns.addrs if netns else ["127.0.0.1", "127.0.0.1"]
        port = 29400 if netns else __import__("disttrain.runtime.env", fromlist=["free_port"]).free_port()
        procs = []
        for node in (0, 1):
            extra = [f"launch.local_addr={addrs[node]}", f"launch.socket_ifname={netns.ifaces[node]}"] if netns else []
            cmd = [*(netns.prefix(node) if netns else []), sys.executable, "-m", "disttrain.cli", "launch",
                   "cluster_configs/torchrun_two_node.yaml", *PARITY, "launch.nproc_per_node=1",
                   f"launch.rdzv_endpoint={addrs[0]}:{port}", f"launch.node_rank={node}",
                   f"launch.rdzv_is_host={'true' if node == 0 else 'false'}", "launch.timeout_s=120",
                   "launch.affinity=explicit", f"launch.cpu_lists=[{node % len(os.sched_getaffinity(0))}]",
                   f"run.output_dir={tmp_path}/node{node}", *extra]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=clean_env()))
        results = [p.communicate(timeout=300) for p in procs]
        for p, (out, err) in zip(procs, results):
            assert p.returncode == 0, err[-3000:] + out[-2000:]
    finally:
        if netns:
            netns.__exit__()
    written = [n for n in ("node0", "node1") if (tmp_path / n / "summary.json").exists()]
    assert len(written) == 1  # rank 0 (either node: c10d ranks nodes in arrival order) writes it
    got = summary(tmp_path / written[0])
    assert got["launcher"] == "torchrun" and got["world_size"] == 2
    assert_same_training(got, local_reference)
    if netns:
        # The two ranks really sat on different "hosts", talking over the veth pair.
        assert sorted(w["addr"] for w in got["workers"]) == sorted(netns.addrs)
        assert sorted(w["socket_ifname"] for w in got["workers"]) == sorted(netns.ifaces)
