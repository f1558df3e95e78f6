"""From a config to the pieces a run is made of: the checked config, the model, its plan, its data.

The config file's own checks (types, ranges) happen where it is parsed (`disttrain.config`); the names that
live in registries are checked here, against the registries themselves: `model.name` and `model.flavor`
(`disttrain.models.MODELS`), `data.source` (the model's spec, then `disttrain.data.sources.SOURCES`) and
`train.optimizer` (`disttrain.optim.OPTIMIZERS`).
"""

from __future__ import annotations

import copy

import torch

from disttrain.config import Config, check_table_count
from disttrain.data.contract import DataSource, SourceSpec
from disttrain.data.sources import open_source, source_spec
from disttrain.errors import ConfigError
from disttrain.models import ModelSpec, model_spec
from disttrain.optim import optimizer_spec
from disttrain.planning.cluster import machine_of, ranks_per_node, workload_of
from disttrain.sharding.plan import DynamicSettings, ShardingPlan
from disttrain.sharding.planner import plan_sharding
from disttrain.tables import EmbeddingTableSpec, by_alias, dynamic_indices


def check_config(cfg: Config) -> ModelSpec:
    """The registry checks of a parsed config; returns the model's spec. One line per problem, naming the key.
    Done once per config object: the spec is kept with the values it was checked for (a copy is checked anew)."""
    values = (cfg.model.name, cfg.model.flavor, cfg.data.source, cfg.data.path, cfg.train.epochs, cfg.train.optimizer)
    done = cfg.__dict__.get("_checked")
    if done is not None and done[0] == values:
        return done[1]
    spec = _check(cfg)
    object.__setattr__(cfg, "_checked", (values, spec))
    return spec


def _check(cfg: Config) -> ModelSpec:
    spec = model_spec(cfg.model.name)
    spec.check_flavor(cfg.model.flavor)
    source = data_source_spec(cfg, spec)
    if source.path and not cfg.data.path:
        raise ConfigError(f"data.path: empty with data.source={cfg.data.source}; expected {source.path}")
    if cfg.train.epochs and not source.epochs:
        with_epochs = [name for name, key in spec.data_sources.items() if source_spec(key).epochs]
        raise ConfigError(f"train.epochs: got {cfg.train.epochs}, but data.source={cfg.data.source} has no epochs; "
                          "expected train.steps" + (f" (or data.source={' or '.join(with_epochs)})" if with_epochs else ""))
    optimizer_spec(cfg.train.optimizer)
    return spec


def data_source_spec(cfg: Config, spec: ModelSpec | None = None) -> SourceSpec:
    """The registered source `data.source` means for this config's model."""
    spec = spec or model_spec(cfg.model.name)
    return source_spec(spec.source_key(cfg.data.source))


def apply_data_shapes(cfg: Config) -> Config:
    """What the dataset imposes on the config (its table sizes unless model.table_sizes is set, its dense width,
    train.steps from train.epochs). In place and idempotent; returns `cfg`."""
    data_source_spec(cfg, check_config(cfg)).shape(cfg)
    return cfg


def build_model(cfg: Config, *, embedding_device: str = "cpu", data_shapes: bool = True) -> torch.nn.Module:
    """The plain model for this config, shaped by its data (`embedding_device="meta"`: the tables are declared,
    not allocated, for the planner or the sharded layer). `data_shapes=False`: the config already holds the
    data's shapes (a saved run's config), so the data need not be present."""
    spec = check_config(cfg)
    if data_shapes:
        apply_data_shapes(cfg)
    check_table_count(len(cfg.model.table_sizes), "model.table_sizes")  # the data's, too: before any work per table
    return check_model(spec.build(cfg, embedding_device=embedding_device), cfg)


def check_model(model, cfg: Config):
    """What the engine reads of any model (a user's above all): a Module with `tables` (its embedding tables'
    specs, in feature order) and `embeddings` (the collection over them)."""
    tables = getattr(model, "tables", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(tables, list) or not tables or not all(
            isinstance(t, EmbeddingTableSpec) for t in tables):
        raise ConfigError(f"model.name={cfg.model.name}: its build returned a {type(model).__name__} without "
                          "`tables`; expected an nn.Module with `tables` (a list of EmbeddingTableSpec) and "
                          "`embeddings` (an EmbeddingBagCollection over them): see disttrain.models.spec")
    if not isinstance(getattr(model, "embeddings", None), torch.nn.Module):
        raise ConfigError(f"model.name={cfg.model.name}: its build returned a {type(model).__name__} without "
                          "`embeddings`; expected an EmbeddingBagCollection over its `tables`")
    check_table_count(len(tables), f"model.name={cfg.model.name}")
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ConfigError(f"model.name={cfg.model.name}: its tables' names repeat ({', '.join(names)}); expected "
                          "one name per table")
    return model


def dynamic_tables(cfg: Config, tables: list[EmbeddingTableSpec]) -> set[str]:
    """The names of the tables `model.dynamic_tables` makes dynamic (`all`, names or `t<i>` aliases)."""
    wanted = cfg.model.dynamic_tables
    names = [t.name for t in tables]
    for name in by_alias(dict.fromkeys(wanted), tables):
        if name not in names and name != "all":
            raise ConfigError(f"model.dynamic_tables: no table named {name!r}; expected `all` or names among "
                              f"{', '.join(names)} (or t0..t{len(names) - 1})")
    out = {names[i] for i in dynamic_indices(wanted, tables)}
    if cfg.data.raw_ids and not out:
        raise ConfigError("data.raw_ids: true, but no table is dynamic; expected model.dynamic_tables (the tables "
                          "whose ids are drawn from the whole int64 space)")
    return out


def build_plan(cfg: Config, world_size: int) -> tuple[torch.nn.Module, ShardingPlan]:
    """The model (tables not allocated) and its sharding plan for `world_size` ranks."""
    if cfg.train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size: got {cfg.train.batch_size}, expected a multiple of the world size {world_size}"
        )
    model = build_model(cfg, embedding_device="meta")
    optimizer = optimizer_spec(cfg.train.optimizer)
    plan = plan_sharding(
        model.tables,
        world_size=world_size,
        strategy=cfg.sharding.strategy,
        overrides=by_alias(cfg.sharding.tables, model.tables),
        num_column_shards=cfg.sharding.num_column_shards,
        optimizer=optimizer.name,
        optimizer_state=optimizer.state_words,
        embedding_dtype=cfg.model.embedding_dtype,
        dynamic=dynamic_tables(cfg, model.tables),
        dynamic_settings=DynamicSettings(min_count=cfg.model.dynamic_min_count, ttl_steps=cfg.model.dynamic_ttl_steps,
                                         capacity=cfg.model.dynamic_capacity),
        ranks_per_node=ranks_per_node(cfg, world_size),
        machine=machine_of(cfg),
        workload=workload_of(cfg, model),
        memory_limit=cfg.sharding.memory_limit_mib * 2**20,
        balance=cfg.sharding.balance,
    )
    return model, plan


def open_data(cfg: Config, tables: list[EmbeddingTableSpec], *, comm, rank: int, verified: str = "") -> DataSource:
    """The batch source `data.source` means for this model (collective: every rank opens it). `verified`: the
    `data.path` whose checksums the launch pre-flight checked (the job's `verified_data`): the source is opened
    with `data.verify=size` then, so no worker hashes it again."""
    spec = check_config(cfg)
    if verified and verified == cfg.data.path and cfg.data.verify == "checksum":
        cfg = copy.deepcopy(cfg)
        cfg.data.verify = "size"
    return open_source(spec.source_key(cfg.data.source), cfg, tables, comm=comm, rank=rank)
