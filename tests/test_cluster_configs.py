"""Every ready config loads, and the multi-socket ones place ranks as their comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from disttrain.config import load_config
from disttrain.runtime.bootstrap import placements_for, resolve_nproc
from disttrain.runtime.topology import parse_lscpu

ROOT = Path(__file__).resolve().parents[1]
CANNED = Path(__file__).parent / "topologies"


@pytest.mark.parametrize("path", sorted((ROOT / "cluster_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_ready_configs_load(path):
    cfg = load_config(path)
    assert cfg.launch.launcher in ("local", "torchrun", "ray", "horovod")


@pytest.mark.parametrize(
    ("config", "machine", "expected"),
    [
        ("two_socket_server.yaml", "two_socket_ht.lscpu", [[0, 1, 2, 3], [4, 5, 6, 7]]),
        ("two_socket_snc_numa.yaml", "two_socket_snc2.lscpu", [[0, 1], [2, 3], [4, 5], [6, 7]]),
    ],
)
def test_multi_socket_configs_place_one_rank_per_socket_or_node(config, machine, expected):
    cfg = load_config(ROOT / "cluster_configs" / config)
    topology = parse_lscpu((CANNED / machine).read_text())
    nproc = resolve_nproc(cfg, topology)
    placements = placements_for(cfg, topology, nproc=nproc, user_env={})
    assert [list(p.cpus) for p in placements] == expected
    assert all(len(p.numa_nodes) == 1 for p in placements)


def test_gpu_node_config_places_one_rank_per_gpu_on_its_numa_node(tmp_path):
    from disttrain.runtime.topology import read_sysfs
    from tests.test_topology import _gpu_node

    cfg = load_config(ROOT / "cluster_configs" / "gpu_node.yaml")
    topology = read_sysfs(_gpu_node(tmp_path))
    nproc = resolve_nproc(cfg, topology)
    placements = placements_for(cfg, topology, nproc=nproc, user_env={})
    assert nproc == 4 and [p.gpu for p in placements] == [0, 1, 2, 3]
    assert [list(p.numa_nodes) for p in placements] == [[0], [0], [1], [1]]


def test_ray_and_horovod_configs_size_their_worlds():
    from disttrain.launch import launch_world

    ray = load_config(ROOT / "cluster_configs" / "ray.yaml")
    assert launch_world(ray) == (2, 0)  # Ray workers place themselves on whichever node they land
    hvd = load_config(ROOT / "cluster_configs" / "horovod.yaml", ["launch.hosts=a:2,b:3"])
    assert launch_world(hvd) == (5, 3)
    two = load_config(ROOT / "cluster_configs" / "torchrun_two_node.yaml")
    assert launch_world(two) == (4, 2)
