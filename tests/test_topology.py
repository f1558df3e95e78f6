"""Topology parsing and per-rank placement on canned machines this one is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from disttrain.config import load_config
from disttrain.errors import ConfigError
from disttrain.runtime.affinity import plan_placements
from disttrain.runtime.bootstrap import resolve_nproc, user_set_variables
from disttrain.runtime.topology import TopologyError, parse_cpu_list, parse_lscpu, read_sysfs

HERE = Path(__file__).parent / "topologies"


def _load(name: str):
    return parse_lscpu((HERE / name).read_text(), source=name)


def _cpus(placements):
    return [list(p.cpus) for p in placements]


def _disjoint(placements) -> bool:
    seen = [c for p in placements for c in p.cpus]
    return len(seen) == len(set(seen))


def test_parse_two_socket_ht():
    topo = _load("two_socket_ht.lscpu")
    assert topo.sockets == [0, 1] and topo.nodes == [0, 1]
    cores = topo.physical_cores()
    assert len(cores) == 8 and cores[0] == [0, 8] and cores[7] == [7, 15]


def test_one_socket_without_ht_like_this_machine():
    topo = _load("one_socket_no_ht.lscpu")
    placements = plan_placements(topo, nproc=2, mode="core")
    assert _cpus(placements) == [[0], [1]]
    assert [p.threads for p in placements] == [1, 1]
    assert placements[0].env["OMP_NUM_THREADS"] == "1" and placements[0].numa_nodes == (0,)


def test_core_mode_uses_physical_cores_first():
    topo = _load("two_socket_ht.lscpu")
    two = plan_placements(topo, nproc=2, mode="core")
    assert _cpus(two) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # one socket each, no sibling threads
    assert [p.numa_nodes for p in two] == [(0,), (1,)] and [p.threads for p in two] == [4, 4]
    logical = plan_placements(topo, nproc=2, mode="core", use_logical_cores=True)
    assert _cpus(logical) == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]
    assert logical[0].threads == 8
    four = plan_placements(topo, nproc=4, mode="core")
    assert _cpus(four) == [[0, 1], [2, 3], [4, 5], [6, 7]] and _disjoint(four)


def test_numa_and_socket_modes_on_snc2():
    topo = _load("two_socket_snc2.lscpu")
    assert topo.nodes == [0, 1, 2, 3] and topo.sockets == [0, 1]
    per_node = plan_placements(topo, nproc=4, mode="numa")
    assert _cpus(per_node) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [p.numa_nodes for p in per_node] == [(0,), (1,), (2,), (3,)]
    split = plan_placements(topo, nproc=8, mode="numa")
    assert _cpus(split) == [[c] for c in range(8)] and [p.numa_nodes[0] for p in split] == [0, 0, 1, 1, 2, 2, 3, 3]
    grouped = plan_placements(topo, nproc=2, mode="numa")
    assert _cpus(grouped) == [[0, 1, 2, 3], [4, 5, 6, 7]] and grouped[0].numa_nodes == (0, 1)
    sockets = plan_placements(topo, nproc=2, mode="socket")
    assert _cpus(sockets) == _cpus(grouped)
    assert [p.to_json()["numa_node"] for p in sockets] == [[0, 1], [2, 3]]


def test_explicit_lists_and_their_errors():
    topo = _load("two_socket_ht.lscpu")
    placements = plan_placements(topo, nproc=2, mode="explicit", cpu_lists=["0-1,8", "4-5"])
    assert _cpus(placements) == [[0, 1, 8], [4, 5]] and placements[0].threads == 3
    with pytest.raises(ConfigError, match=r"launch.cpu_lists\[1\]: CPU 1 is also in launch.cpu_lists\[0\]"):
        plan_placements(topo, nproc=2, mode="explicit", cpu_lists=["0-1", "1-2"])
    with pytest.raises(ConfigError, match=r"launch.cpu_lists\[1\]: '14-17' names CPUs 16-17 that this machine does not have"):
        plan_placements(topo, nproc=2, mode="explicit", cpu_lists=["0-1", "14-17"])
    with pytest.raises(ConfigError, match=r"launch.cpu_lists: got 1 lists for 2 local ranks"):
        plan_placements(topo, nproc=2, mode="explicit", cpu_lists=["0-1"])
    with pytest.raises(TopologyError, match=r"launch.cpu_lists\[0\]: 'x' is not a CPU number"):
        plan_placements(topo, nproc=1, mode="explicit", cpu_lists=["x"])


def test_more_ranks_than_cores():
    topo = _load("one_socket_no_ht.lscpu")
    with pytest.raises(ConfigError, match=r"launch.nproc_per_node: 3 ranks but this machine has 2 physical cores"):
        plan_placements(topo, nproc=3, mode="core")
    shared = plan_placements(topo, nproc=3, mode="core", allow_oversubscribe=True)
    assert _cpus(shared) == [[0], [1], [0]] and all(p.shared for p in shared)


def test_none_mode_and_user_variables_are_kept():
    topo = _load("two_socket_ht.lscpu")
    free = plan_placements(topo, nproc=2, mode="none")
    assert [p.cpus for p in free] == [None, None] and free[0].threads == 4
    user = plan_placements(topo, nproc=2, mode="core", user_env={"OMP_NUM_THREADS": "3", "KMP_BLOCKTIME": "0"})
    assert "OMP_NUM_THREADS" not in user[0].env and "KMP_BLOCKTIME" not in user[0].env
    assert user[0].threads == 3 and user[0].env["MKL_NUM_THREADS"] == "4"


def test_user_variables_recorded_by_launchers_win_over_torchrun_defaults():
    # torchrun adds OMP_NUM_THREADS=1 to its workers; our launchers record what the user had set.
    assert user_set_variables({"OMP_NUM_THREADS": "1", "DISTTRAIN_USER_SET": ""}) == {}
    assert user_set_variables({"OMP_NUM_THREADS": "6", "DISTTRAIN_USER_SET": "OMP_NUM_THREADS"}) == {"OMP_NUM_THREADS": "6"}
    assert user_set_variables({"OMP_NUM_THREADS": "2"}) == {"OMP_NUM_THREADS": "2"}


def test_malformed_lscpu_names_file_and_line():
    with pytest.raises(TopologyError, match=r"bad.lscpu:3: '2,x,0,0': expected integers"):
        parse_lscpu("# CPU,Core,Socket,Node\n0,0,0,0\n2,x,0,0\n", source="bad.lscpu")
    with pytest.raises(TopologyError, match=r"bad.lscpu:1: '0' has 1 fields"):
        parse_lscpu("0\n", source="bad.lscpu")
    with pytest.raises(TopologyError, match=r"empty.lscpu: no CPU lines"):
        parse_lscpu("# nothing\n", source="empty.lscpu")
    assert parse_cpu_list("0-2,5") == [0, 1, 2, 5]


def _gpu_node(root: Path) -> Path:
    """A canned sysfs tree: 2 sockets x 4 cores (no HT), NUMA node per socket, 4 NVIDIA GPUs (2 per node)."""
    cpu_dir = root / "devices/system/cpu"
    cpu_dir.mkdir(parents=True)
    (cpu_dir / "online").write_text("0-7\n")
    for cpu in range(8):
        topo = cpu_dir / f"cpu{cpu}/topology"
        topo.mkdir(parents=True)
        (topo / "core_id").write_text(f"{cpu % 4}\n")
        (topo / "physical_package_id").write_text(f"{cpu // 4}\n")
    for node, cpus in ((0, "0-3"), (1, "4-7")):
        (root / f"devices/system/node/node{node}").mkdir(parents=True)
        (root / f"devices/system/node/node{node}/cpulist").write_text(cpus + "\n")
    for i, node in enumerate((0, 0, 1, 1)):
        dev = root / f"bus/pci/devices/0000:{0x17 + i:02x}:00.0"
        dev.mkdir(parents=True)
        (dev / "vendor").write_text("0x10de\n")
        (dev / "class").write_text("0x030200\n")
        (dev / "numa_node").write_text(f"{node}\n")
    nic = root / "bus/pci/devices/0000:03:00.0"
    nic.mkdir(parents=True)
    (nic / "vendor").write_text("0x8086\n")
    (nic / "class").write_text("0x020000\n")
    return root


def test_gpu_node_from_sysfs(tmp_path):
    topo = read_sysfs(_gpu_node(tmp_path))
    assert topo.sockets == [0, 1] and [g.numa_node for g in topo.gpus] == [0, 0, 1, 1]
    placements = plan_placements(topo, nproc=4, mode="core", use_gpus=True)
    assert [p.gpu for p in placements] == [0, 1, 2, 3]
    assert _cpus(placements) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # each on its GPU's NUMA node
    assert [p.numa_nodes for p in placements] == [(0,), (0,), (1,), (1,)]
    with pytest.raises(ConfigError, match=r"5 ranks but 4 GPUs"):
        plan_placements(topo, nproc=5, mode="core", use_gpus=True)


def test_auto_rank_count():
    snc2 = _load("two_socket_snc2.lscpu")
    assert resolve_nproc(load_config(None, ["launch.nproc_per_node=auto"]), snc2) == 2
    assert resolve_nproc(load_config(None, ["launch.nproc_per_node=auto", "launch.affinity=numa"]), snc2) == 4
    with pytest.raises(ConfigError, match=r"launch.nproc_per_node: got 'many', expected a positive integer or auto"):
        load_config(None, ["launch.nproc_per_node=many"])


def test_memory_binding_syscall_on_this_machine():
    """set_mempolicy(MPOL_BIND) to node 0 (valid on any Linux machine), in a child so this one is untouched."""
    code = (
        "from disttrain.runtime.affinity import bind_memory; import torch; "
        "r = bind_memory([0]); torch.ones(1 << 20).sum(); print(r)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "bind:0"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disttrain.cli", *args], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})


def test_topology_command_json_shape():
    out = _cli("topology", "--lscpu", str(HERE / "two_socket_snc2.lscpu"), "--nproc-per-node", "4",
               "--affinity", "numa", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["machine"]["numa_nodes"] == [0, 1, 2, 3]
    assert [r["numa_node"] for r in data["ranks"]] == [0, 1, 2, 3]
    assert data["ranks"][0]["cpus"] == [0, 1] and data["ranks"][0]["env"]["OMP_NUM_THREADS"] == "2"
    auto = json.loads(_cli("topology", "--lscpu", str(HERE / "two_socket_ht.lscpu"), "--nproc-per-node", "auto",
                           "--json").stdout)
    assert [r["cpus"] for r in auto["ranks"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lscpu", "{bad}"], "bad.lscpu:2: '1,a' has 2 fields"),
        (["--lscpu", "{one}", "--nproc-per-node", "3"], "launch.nproc_per_node: 3 ranks but this machine has 2 physical cores"),
        (["--lscpu", "{one}", "launch.affinity=explicit", "launch.cpu_lists=[0-1,1]"], "launch.cpu_lists[1]: CPU 1 is also in"),
        (["--lscpu", "{one}", "launch.affinity=explicit", "launch.cpu_lists=[0,9]"], "launch.cpu_lists[1]: '9' names CPUs 9"),
    ],
)
def test_topology_command_errors_are_one_line(tmp_path, args, message):
    bad = tmp_path / "bad.lscpu"
    bad.write_text("0,0,0,0\n1,a\n")
    args = [a.format(bad=bad, one=HERE / "one_socket_no_ht.lscpu") for a in args]
    out = _cli("topology", *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
