"""Launchers (installed as `disttrain.launchers`): each only starts processes that end in `disttrain.worker`.

`LAUNCHERS` is the table `launch.launcher` names: per launcher, the world it starts, its own pre-flight, how it
starts the workers, and what the generic pre-flight and the workers need to know about it. Ray and Horovod are
imported only when their launcher runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from disttrain.config import Config
from disttrain.errors import ConfigError


def _nothing(cfg: Config) -> None:
    return None


@dataclass(frozen=True)
class Launcher:
    name: str
    # (world size, ranks on this machine; 0 = the scheduler places them) for a config.
    world: Callable[[Config], tuple[int, int]]
    # start(cfg, resolved config path) -> the job's exit code.
    start: Callable[[Config, str], int]
    # Checks of this launcher's own before anything starts (e.g. horovodrun is installed).
    preflight: Callable[[Config], None] = _nothing
    # Whether the workers see the driver's storage and GPUs, so the generic pre-flight can check data,
    # checkpoints and nccl here (Ray workers may run elsewhere).
    driver_sees_workers: bool = True
    # Workers talk through Horovod's own ops instead of a torch.distributed process group.
    horovod_collectives: bool = False
    # Environment variables that mark a worker this launcher started by hand (no `disttrain launch`).
    marks: tuple[str, ...] = ()


def _local_world(cfg: Config) -> tuple[int, int]:
    nproc = int(cfg.launch.nproc_per_node)
    return nproc * cfg.launch.nnodes, nproc


def _start_local(cfg: Config, config_path: str) -> int:
    from disttrain.launchers.local import launch_local

    return launch_local(cfg, config_path)


def _start_torchrun(cfg: Config, config_path: str) -> int:
    from disttrain.launchers.torchrun import launch_torchrun

    return launch_torchrun(cfg, config_path)


def _ray_world(cfg: Config) -> tuple[int, int]:
    from disttrain.launchers.ray_cluster import world_size

    return world_size(cfg), 0


def _start_ray(cfg: Config, config_path: str) -> int:
    from disttrain.launchers.ray_cluster import launch_ray

    return launch_ray(cfg, config_path)


def _horovod_world(cfg: Config) -> tuple[int, int]:
    from disttrain.launchers.horovod import parse_hosts

    hosts = parse_hosts(cfg)
    return sum(slots for _, slots in hosts), max(slots for _, slots in hosts)


def _horovod_preflight(cfg: Config) -> None:
    from disttrain.launchers.horovod import check_installed

    check_installed()  # a one-line error before anything starts when Horovod is missing


def _start_horovod(cfg: Config, config_path: str) -> int:
    from disttrain.launchers.horovod import launch_horovod

    return launch_horovod(cfg, config_path)


LAUNCHERS: Mapping[str, Launcher] = {
    launcher.name: launcher
    for launcher in (
        Launcher("local", _local_world, _start_local),
        Launcher("torchrun", _local_world, _start_torchrun, marks=("TORCHELASTIC_RUN_ID",)),
        Launcher("ray", _ray_world, _start_ray, driver_sees_workers=False),
        Launcher("horovod", _horovod_world, _start_horovod, preflight=_horovod_preflight, horovod_collectives=True,
                 marks=("HOROVOD_RANK",)),
    )
}


def launcher_for(name: str) -> Launcher:
    """The table entry for `launch.launcher`; a one-line error naming the choices otherwise."""
    if name not in LAUNCHERS:
        raise ConfigError(f"launch.launcher: got {name!r}, expected one of {', '.join(LAUNCHERS)}")
    return LAUNCHERS[name]


def launcher_of_worker(environ: Mapping[str, str]) -> str:
    """Which launcher started this worker: the one `disttrain launch` names, else the one whose variables are
    set (torchrun or horovodrun by hand), else "none" (a plain process)."""
    if "DISTTRAIN_LAUNCHER" in environ:
        return environ["DISTTRAIN_LAUNCHER"]
    for launcher in LAUNCHERS.values():
        if any(mark in environ for mark in launcher.marks):
            return launcher.name
    return "none"
