"""One typed config tree: YAML file + dotted command-line overrides -> dataclasses (`disttrain.config_schema`
holds every key, its type, default and meaning).

Every key has a default, so a file may hold only some sections and a run may use no file at all.
Unknown keys and values of the wrong type are rejected with the key's full path. A config is a YAML file or the
name of a ready config shipped inside the package (`demo`, `ray`, ...: `disttrain config list`).

Example::

    cfg = load_config("demo", ["train.batch_size=4096", "model.table_sizes=[7,1001,13]"])
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from disttrain.config_schema import (
    AFFINITIES,
    BACKENDS,
    DISTRIBUTIONS,
    INTERACTIONS,
    POOLINGS,
    STRATEGIES,
    CheckpointConfig,
    Config,
    DataConfig,
    LaunchConfig,
    ModelConfig,
    QuantConfig,
    RunConfig,
    ShardingConfig,
    TrainConfig,
)
from disttrain.config_tree import merge, nest, parse_override, yaml_load
from disttrain.errors import ConfigError
from disttrain.plugins import is_import_path

# Keys whose values are names in a registry are checked there, not here (one home per fact): model.name and
# model.flavor (disttrain.models.MODELS), data.source (the model's spec and disttrain.data.sources.SOURCES),
# train.optimizer (disttrain.optim.OPTIMIZERS), launch.launcher (disttrain.launchers.LAUNCHERS).
# The ready configs: the YAML files of the top-level cluster_configs/, installed as this package's data.
READY_CONFIGS = "disttrain.cluster_configs"
# Keys whose values may name code by import path: a stored config (a checkpoint's, an export's) naming code is
# not imported unless the user names the same code again (see stored_config).
CODE_KEYS = ("model.name", "data.source")

CHOICES: dict[str, tuple[str, ...]] = {
    "model.interaction": INTERACTIONS,
    "model.pooling": POOLINGS,
    "model.embedding_dtype": ("fp32", "bf16"),
    "data.verify": ("checksum", "size"),
    "data.distribution": DISTRIBUTIONS,
    "train.precision": ("fp32", "bf16"),
    "train.nonfinite_loss": ("stop", "skip"),
    "train.resume_data": ("auto", "continue", "restart"),
    "train.sparse_kernel": ("auto", "compiled", "torch"),
    "sharding.strategy": STRATEGIES,
    "launch.affinity": AFFINITIES,
    "launch.backend": BACKENDS,
}
POSITIVE = ("train.batch_size", "model.dynamic_min_count", "quant.calibration_batches", "launch.nnodes", "data.multi_hot_max", "launch.cpus_per_worker",
            "launch.timeout_s", "data.synthetic_samples", "launch.stop_grace_s")
NON_NEGATIVE = (
    "train.steps", "train.eval_every", "train.check_replicas_every", "model.max_rows", "model.embedding_dim", "sharding.num_column_shards",
    "data.cycle_batches", "data.max_history", "data.num_dense", "train.profile_steps", "launch.node_rank", "launch.threads_per_worker",
    "launch.num_workers", "launch.max_restarts", "checkpoint.every_steps", "checkpoint.keep_last",
    "model.dynamic_ttl_steps", "model.dynamic_capacity", "sharding.memory_limit_mib", "cluster.ranks_per_node",
    "cluster.gemm_gflops", "cluster.dense_efficiency", "cluster.memory_gbs", "cluster.intra_gbs", "cluster.intra_latency_us", "cluster.inter_gbs",
    "cluster.inter_latency_us",
)

# Every key holding a TCP port: a port (0 = a free one), or an address whose `:port` part, when given, is one.
PORT_KEYS = ("launch.master_port",)
ENDPOINT_KEYS = ("launch.rdzv_endpoint", "launch.ray_address")
# Tables a model may have: several times the few hundred sparse features of the largest published CTR models. The
# planner and the sharded layer do work per table and rank (planning 4,096 tables takes ~10 s on one core) and
# DLRM's dot interaction per pair of tables (8.4M pairs at 4,096), so a million table sizes (a list pasted wrong,
# a column per value) are refused in one line before any of that runs.
MAX_TABLES = 4096


def _check_ports(flat: dict[str, Any]) -> None:
    for path in PORT_KEYS:
        if not 0 <= flat[path] <= 65535:
            raise ConfigError(f"{path}: got {flat[path]!r}, expected a TCP port 0..65535 (0 = a free port)")
    for path in ENDPOINT_KEYS:
        address = flat[path].split("://", 1)[-1]  # ray://host:10001
        host, sep, port = address.rpartition(":")
        if sep and not host.endswith(":") and not (port.isdigit() and 0 < int(port) <= 65535):
            raise ConfigError(f"{path}: got {flat[path]!r}, expected host:port with a TCP port 1..65535")


def check_table_count(count: int, where: str) -> None:
    """A one-line ConfigError naming `where` when a model or a dataset has more than MAX_TABLES tables."""
    if count > MAX_TABLES:
        raise ConfigError(f"{where}: {count:,} tables, more than the {MAX_TABLES:,} disttrain supports (plans, the "
                          f"exchange and DLRM's interaction do work per table or pair of tables); expected at most "
                          f"{MAX_TABLES:,}")


def validate(cfg: Config) -> Config:
    """Types are checked while merging; these are the checks of values that need no registry, no model and no
    world size."""
    flat = to_flat_dict(cfg)
    for path, choices in CHOICES.items():
        if flat[path] not in choices:
            raise ConfigError(f"{path}: got {flat[path]!r}, expected one of {', '.join(choices)}")
    for path in POSITIVE:
        if flat[path] <= 0:
            raise ConfigError(f"{path}: got {flat[path]!r}, expected a positive integer")
    for path in NON_NEGATIVE:
        if flat[path] < 0:
            raise ConfigError(f"{path}: got {flat[path]!r}, expected a number >= 0")
    _check_ports(flat)
    nproc = cfg.launch.nproc_per_node
    if nproc != "auto" and (isinstance(nproc, str) or nproc <= 0):
        raise ConfigError(f"launch.nproc_per_node: got {nproc!r}, expected a positive integer or auto")
    if cfg.launch.rdzv_is_host not in (True, False, "auto"):
        raise ConfigError(f"launch.rdzv_is_host: got {cfg.launch.rdzv_is_host!r}, expected true, false or auto")
    if cfg.launch.affinity == "explicit" and not cfg.launch.cpu_lists:
        raise ConfigError("launch.cpu_lists: empty with launch.affinity=explicit; expected one CPU list per local rank")
    if cfg.data.eval_batches < -1:
        raise ConfigError(f"data.eval_batches: got {cfg.data.eval_batches}, expected -1 (source default), 0 or more")
    if cfg.train.epochs < 0:
        raise ConfigError(f"train.epochs: got {cfg.train.epochs}, expected a number >= 0")
    if not 0 <= cfg.train.target_auc < 1:
        raise ConfigError(f"train.target_auc: got {cfg.train.target_auc}, expected an AUC in [0, 1); 0 = no target")
    if cfg.data.shuffle_window <= 0:
        raise ConfigError(f"data.shuffle_window: got {cfg.data.shuffle_window}, expected a positive number of rows")
    if not 0 <= cfg.quant.max_relative_auc_loss < 1:
        raise ConfigError(f"quant.max_relative_auc_loss: got {cfg.quant.max_relative_auc_loss}, expected a fraction "
                          "in [0, 1) (0.01 = 1%)")
    if cfg.sharding.balance < 1:
        raise ConfigError(f"sharding.balance: got {cfg.sharding.balance!r}, expected a number >= 1 (the fullest rank's "
                          "memory over the mean)")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: got {cfg.train.lr!r}, expected a positive number")
    for name, strategy in cfg.sharding.tables.items():
        if strategy not in STRATEGIES[1:]:
            raise ConfigError(
                f"sharding.tables.{name}: got {strategy!r}, expected one of {', '.join(STRATEGIES[1:])}"
            )
    for name, pooling in cfg.model.table_pooling.items():
        if pooling not in POOLINGS:
            raise ConfigError(f"model.table_pooling.{name}: got {pooling!r}, expected one of {', '.join(POOLINGS)}")
    if len(set(cfg.model.table_names)) != len(cfg.model.table_names):
        raise ConfigError(f"model.table_names: got {cfg.model.table_names}, expected distinct names")
    check_table_count(len(cfg.model.table_sizes), "model.table_sizes")
    for i, rows in enumerate(cfg.model.table_sizes):
        if rows <= 0:
            raise ConfigError(f"model.table_sizes[{i}]: got {rows}, expected a positive number of rows")
    return cfg


def _build(data: Any, overrides: list[str] | None, *, source: str) -> Config:
    """Parsed YAML sections (from `source`) plus dotted overrides -> a validated Config."""
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    merge(cfg, data, "")
    for text in overrides or []:
        parts, value = parse_override(text)
        merge(cfg, nest(parts, value), "")
    return validate(cfg)


def config_from_yaml(text: str, overrides: list[str] | None = None, *, source: str = "config") -> Config:
    """YAML text with overrides on top (the text's own code keys are trusted: use stored_config for a file
    disttrain wrote)."""
    return _build(yaml_load(text) or {}, overrides, source=source)


def check_trusted(cfg: Config, overrides: list[str] | None, *, source: str) -> None:
    """A stored config that names code by import path (`model.name=package.module:SPEC`) runs it only when the
    user names the same code on the command line: a checkpoint or an export never makes disttrain import code."""
    named = {}
    for text in overrides or []:
        parts, value = parse_override(text)
        named[".".join(parts)] = value
    flat = to_flat_dict(cfg)
    for key in CODE_KEYS:
        value = flat[key]
        if is_import_path(value) and named.get(key) != value:
            raise ConfigError(f"{source}: {key} is {value!r}, code that disttrain does not import from a file it "
                              f"reads; pass {key}={value} to run it")


def stored_config(text: str, overrides: list[str] | None = None, *, source: str, apply: bool = True) -> Config:
    """A config disttrain saved (a checkpoint's, an export's, an ONNX graph's), checked for code it names
    (check_trusted), with the overrides on top (`apply=False`: the overrides only vouch for its code)."""
    cfg = _build(yaml_load(text) or {}, [], source=source)
    check_trusted(cfg, overrides, source=source)
    return _build(yaml_load(text) or {}, overrides, source=source) if apply and overrides else cfg


def _ready():
    return resources.files(READY_CONFIGS)


def ready_configs() -> dict[str, str]:
    """The ready configs shipped in the package: name -> the first sentence of its leading comment."""
    out = {}
    for entry in sorted(_ready().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            lines = entry.read_text().splitlines()
            comment = " ".join(line.lstrip("#").strip() for line in lines[:next(
                (i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))])
            sentence = comment.split(". ")[0].rstrip(".")
            out[entry.name.removesuffix(".yaml")] = (sentence if len(sentence) <= 100
                                                     else sentence[:100].rsplit(" ", 1)[0] + " ...")
    return out


def ready_config_name(path: str | Path) -> str | None:
    """The ready config a missing file means: `demo`, `demo.yaml`, or `cluster_configs/demo.yaml` run from
    outside the checkout (None: not a ready config's name)."""
    p = Path(path)
    if p.suffix not in ("", ".yaml") or not (len(p.parts) == 1 or p.parent.name == "cluster_configs"):
        return None
    return p.stem if p.stem in ready_configs() else None


def config_text(path: str | Path) -> tuple[str, str]:
    """(YAML text, where it came from) of a config file or a ready config's name."""
    p = Path(path)
    if p.is_file():
        return p.read_text(), str(p)
    name = None if p.exists() else ready_config_name(p)
    if name is None:
        raise ConfigError(f"{path}: config file not found; expected a YAML file or a ready config "
                          f"({', '.join(ready_configs())}: `disttrain config list`)")
    return (_ready() / f"{name}.yaml").read_text(), f"{name} (ready config)"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A config file, or a ready config's name, or None (every default), with dotted overrides on top."""
    data: Any = {}
    source = "defaults"
    if path is not None:
        text, source = config_text(path)
        try:
            data = yaml_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return _build(data, overrides, source=source)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in to_dict(cfg).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = ["CHOICES", "CODE_KEYS", "MAX_TABLES", "READY_CONFIGS", "STRATEGIES", "CheckpointConfig", "Config",
           "DataConfig", "LaunchConfig", "ModelConfig", "QuantConfig", "RunConfig", "ShardingConfig", "TrainConfig",
           "check_table_count", "check_trusted", "config_from_yaml", "config_text", "load_config", "ready_config_name",
           "ready_configs", "stored_config", "to_dict", "to_flat_dict", "to_yaml", "validate"]
