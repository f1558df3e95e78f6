"""The machine's CPU topology: sockets, NUMA nodes, physical cores and their hyper-thread siblings, GPUs.

Parsers take text (the output of `lscpu -p=CPU,CORE,SOCKET,NODE`) or a sysfs root directory, so tests can
describe a 2-socket, hyper-threaded, sub-NUMA-clustered server on a 2-core laptop.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from disttrain.errors import DisttrainError


class TopologyError(DisttrainError):
    """A topology description (lscpu text, sysfs) cannot be read."""


@dataclass(frozen=True)
class LogicalCPU:
    cpu: int
    core: int  # physical core id, unique within its socket
    socket: int
    node: int  # NUMA node (0 on machines without NUMA)


@dataclass(frozen=True)
class GPU:
    index: int
    numa_node: int  # -1 when the platform does not say
    pci_bus: str = ""


@dataclass(frozen=True)
class Topology:
    cpus: tuple[LogicalCPU, ...]
    gpus: tuple[GPU, ...] = field(default_factory=tuple)

    @property
    def sockets(self) -> list[int]:
        return sorted({c.socket for c in self.cpus})

    @property
    def nodes(self) -> list[int]:
        return sorted({c.node for c in self.cpus})

    def physical_cores(self) -> list[list[int]]:
        """Each physical core's logical CPUs (lowest first), cores ordered by (node, socket, core)."""
        by_core: dict[tuple[int, int, int], list[int]] = {}
        for c in self.cpus:
            by_core.setdefault((c.node, c.socket, c.core), []).append(c.cpu)
        return [sorted(cpus) for _, cpus in sorted(by_core.items())]

    def node_of(self, cpu: int) -> int:
        return next(c.node for c in self.cpus if c.cpu == cpu)

    def restricted_to(self, allowed: Iterable[int]) -> Topology:
        """Only the CPUs this process may use (cgroups, taskset, a parent's pinning)."""
        allowed = set(allowed)
        return Topology(tuple(c for c in self.cpus if c.cpu in allowed), self.gpus)

    def describe(self) -> str:
        cores = self.physical_cores()
        threads = max((len(c) for c in cores), default=1)
        lines = [
            f"{len(self.sockets)} socket(s), {len(self.nodes)} NUMA node(s), {len(cores)} physical cores, "
            f"{len(self.cpus)} logical CPUs ({threads} per core)"
        ]
        for node in self.nodes:
            node_cpus = sorted(c.cpu for c in self.cpus if c.node == node)
            sockets = sorted({c.socket for c in self.cpus if c.node == node})
            lines.append(f"  node {node} (socket {','.join(map(str, sockets))}): CPUs {format_cpus(node_cpus)}")
        for gpu in self.gpus:
            lines.append(f"  GPU {gpu.index} ({gpu.pci_bus or 'pci ?'}): NUMA node {gpu.numa_node}")
        return "\n".join(lines)


def format_cpus(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'"""
    cpus = sorted(set(cpus))
    parts, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            parts.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(parts)


def parse_cpu_list(text: str, *, where: str = "cpu list") -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11]"""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                cpus.extend(range(lo, hi + 1))
            else:
                cpus.append(int(part))
        except ValueError:
            raise TopologyError(f"{where}: {part!r} is not a CPU number or range like 0-3") from None
    return cpus


def parse_lscpu(text: str, *, source: str = "lscpu output") -> Topology:
    """Parse `lscpu -p=CPU,CORE,SOCKET,NODE` (comment lines start with '#'; NODE may be empty)."""
    cpus = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(",")
        if len(fields) < 3:
            raise TopologyError(
                f"{source}:{number}: {line!r} has {len(fields)} fields; expected CPU,CORE,SOCKET,NODE "
                "(from `lscpu -p=CPU,CORE,SOCKET,NODE`)"
            )
        try:
            cpu, core, socket = (int(x) for x in fields[:3])
            node = int(fields[3]) if len(fields) > 3 and fields[3].strip() else 0
        except ValueError:
            raise TopologyError(f"{source}:{number}: {line!r}: expected integers CPU,CORE,SOCKET,NODE") from None
        cpus.append(LogicalCPU(cpu, core, socket, node))
    if not cpus:
        raise TopologyError(f"{source}: no CPU lines (expected the output of `lscpu -p=CPU,CORE,SOCKET,NODE`)")
    if len({c.cpu for c in cpus}) != len(cpus):
        raise TopologyError(f"{source}: a CPU number appears twice")
    return Topology(tuple(sorted(cpus, key=lambda c: c.cpu)))


def _read(path: Path) -> str:
    return path.read_text().strip()


def read_sysfs(root: str | Path = "/sys") -> Topology:
    """Read CPUs, NUMA nodes and NVIDIA GPUs from a sysfs tree (the real one, or a canned copy)."""
    root = Path(root)
    cpu_dir = root / "devices/system/cpu"
    try:
        online = parse_cpu_list(_read(cpu_dir / "online"), where=str(cpu_dir / "online"))
    except OSError as exc:
        raise TopologyError(f"{cpu_dir / 'online'}: cannot read ({exc.strerror})") from None
    node_of: dict[int, int] = {}
    for node_dir in sorted((root / "devices/system/node").glob("node[0-9]*")):
        for cpu in parse_cpu_list(_read(node_dir / "cpulist"), where=str(node_dir / "cpulist")):
            node_of[cpu] = int(node_dir.name[4:])
    cpus = []
    for cpu in online:
        topo = cpu_dir / f"cpu{cpu}" / "topology"
        try:
            core, socket = int(_read(topo / "core_id")), int(_read(topo / "physical_package_id"))
        except (OSError, ValueError):
            core, socket = cpu, 0
        cpus.append(LogicalCPU(cpu, core, socket, node_of.get(cpu, 0)))
    return Topology(tuple(cpus), tuple(_sysfs_gpus(root)))


def _sysfs_gpus(root: Path) -> list[GPU]:
    gpus = []
    for device in sorted((root / "bus/pci/devices").glob("*")):
        try:
            vendor, cls = _read(device / "vendor"), _read(device / "class")
        except OSError:
            continue
        if vendor == "0x10de" and cls[:6] in ("0x0300", "0x0302"):  # NVIDIA display / 3D controller
            try:
                node = int(_read(device / "numa_node"))
            except (OSError, ValueError):
                node = -1
            gpus.append(GPU(len(gpus), node, device.name))
    return gpus


def detect_topology(lscpu_file: str | None = None) -> Topology:
    """This machine (restricted to the CPUs this process may use), or a canned lscpu file."""
    if lscpu_file:
        path = Path(lscpu_file)
        try:
            return parse_lscpu(path.read_text(), source=str(path))
        except OSError as exc:
            raise TopologyError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        topology = read_sysfs()
    except TopologyError:
        out = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET,NODE"], capture_output=True, text=True, check=False)
        topology = parse_lscpu(out.stdout, source="lscpu")
    return topology.restricted_to(os.sched_getaffinity(0))
