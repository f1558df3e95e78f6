"""The cost model's inputs from a config: the machine's rates (`cluster.*`, a `disttrain probe` file, defaults),
the ranks per node, and one step's dense work (FLOPs per sample, parameters all-reduced)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from disttrain.config import Config
from disttrain.errors import ConfigError
from disttrain.sharding.cost_model import Machine, Workload

RATES = tuple(f.name for f in dataclasses.fields(Machine))


def read_probe(path: str) -> dict[str, float]:
    """A `probe.json` written by `disttrain probe`: its rates by name (checked: positive finite numbers)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cluster.probe: cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"cluster.probe: {path} line {exc.lineno}: not JSON ({exc.msg}); expected the probe.json "
                          "`disttrain probe` writes") from None
    rates = data.get("machine") if isinstance(data, dict) else None
    if not isinstance(rates, dict):
        raise ConfigError(f"cluster.probe: {path} has no `machine` mapping; expected the probe.json `disttrain probe` "
                          "writes")
    out = {}
    for name, value in rates.items():
        if name not in RATES:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"cluster.probe: {path}: machine.{name} is {value!r}; expected a positive number")
        out[name] = float(value)
    return out


def machine_of(cfg: Config) -> Machine:
    """`cluster.*` keys that are set, else the probe file's measurement, else the defaults."""
    probed = read_probe(cfg.cluster.probe) if cfg.cluster.probe else {}
    chosen = {}
    for name in RATES:
        value = float(getattr(cfg.cluster, name))
        if value > 0:
            chosen[name] = value
        elif name in probed:
            chosen[name] = probed[name]
    return Machine(**chosen)


def ranks_per_node(cfg: Config, world_size: int) -> int:
    """`cluster.ranks_per_node`, else the world size spread over `launch.nnodes` (one node when it does not
    divide)."""
    if cfg.cluster.ranks_per_node:
        return min(cfg.cluster.ranks_per_node, world_size)
    nodes = max(cfg.launch.nnodes, 1)
    return world_size // nodes if world_size % nodes == 0 else world_size


def workload_of(cfg: Config, model: torch.nn.Module) -> Workload:
    """One step's dense work: 6 FLOPs per dense parameter per sample (a matmul's forward and backward), which
    is exact for MLPs; `disttrain plan --simulate` counts the FLOPs instead."""
    dense = sum(p.numel() for name, p in model.named_parameters() if p.device.type != "meta")
    ids = (1 + cfg.data.multi_hot_max) / 2 if cfg.data.multi_hot_max > 1 else 1.0
    return Workload(global_batch=cfg.train.batch_size, dense_flops_per_sample=6.0 * dense, dense_params=dense,
                    ids_per_bag=ids)
