"""The model spec: everything disttrain needs to know about a model, declared once in the model's own module.

A model is a plain `nn.Module` that never imports torch.distributed:

    model.tables        its embedding tables (`disttrain.tables.EmbeddingTableSpec`), in feature order
    model.embeddings    an `EmbeddingBagCollection` over them (swapped for the sharded one by `parallelize`)
    model(dense, sparse) -> logits [B]; in training, models with an auxiliary loss return
                        (logits, auxiliary loss summed over this rank's samples)

A model reads its tables from the data with `tables_from_config(cfg, dim, default=...)`: with a prepared
directory they are the data's categorical columns (names, rows, pooling); with generated data, `default`.

Its spec (`SPEC` in the module, listed in `disttrain.models.MODELS`) says how to build it and what the
registry, the config check, the planner, training and serving must know about it:

    name, flavors       `model.name` and the `model.flavor` presets (every model has `debug`, for tests)
    build(cfg, *, embedding_device)   the plain model for a config ("meta": tables declared, not allocated)
    data_sources        the `data.source` values it accepts -> the data source registry's keys
    loss_scale          the log loss is multiplied by this (DIEN's 2-class softmax loss is half of it)
    loss(logits, labels)    the model's own training loss instead, summed (not averaged) over the samples given
    auxiliary_loss      training forward returns (logits, auxiliary loss)
    weights_read_directly   Linear layers whose weights the model reads itself (int8 keeps them fp32)
    onnx                `disttrain export-onnx` can express it
    history_positions(tables)   the longest behaviour history it reads (None: no history)
    reference_import(state_dict)   how a reference implementation's checkpoint maps onto it (None: none)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from disttrain.errors import ConfigError
from disttrain.plugins import SOURCE_GROUP, entry_points, is_import_path
from disttrain.tables import EmbeddingTableSpec


@dataclass(frozen=True)
class ModelSpec:
    name: str
    flavors: Mapping[str, Any]
    build: Callable[..., Any]
    data_sources: Mapping[str, str]
    description: str = ""
    loss_scale: float = 1.0
    auxiliary_loss: bool = False
    weights_read_directly: tuple[str, ...] = ()
    onnx: bool = True
    history_positions: Callable[[list[EmbeddingTableSpec]], int] | None = None
    reference_import: Callable[[dict], Any] | None = None
    loss: Callable[[Any, Any], Any] | None = None

    def check_flavor(self, flavor: str) -> Any:
        if flavor not in self.flavors:
            raise ConfigError(f"model.flavor: got {flavor!r}, expected one of {', '.join(self.flavors)} for "
                              f"model.name={self.name}")
        return self.flavors[flavor]

    def source_key(self, source: str) -> str:
        """The data source registry key for `data.source=source` (a user's source, by import path or entry
        point, as it is); a one-line error when this model takes none."""
        if source in self.data_sources:
            return self.data_sources[source]
        if is_import_path(source) or source in entry_points(SOURCE_GROUP):
            return source
        raise ConfigError(f"data.source: got {source!r} with model.name={self.name}; expected "
                          f"{' or '.join(self.data_sources)}, or package.module:attribute naming a data source spec")


def config_tables(cfg, flavor, *, extra_cols: int = 0, pooling: str | None = None) -> list[EmbeddingTableSpec]:
    """Tables t0.. of a flavor (anything with `table_rows` and `embedding_dim`) as the config adjusts them:
    `model.table_sizes` replaces the rows, `model.max_rows` caps them, `model.embedding_dim` replaces the dim;
    `extra_cols` columns are appended to every table (fused per-id weights); `pooling` (the model's own
    combiner) replaces `model.pooling`."""
    rows = list(cfg.model.table_sizes) or list(flavor.table_rows)
    if cfg.model.max_rows:
        rows = [min(r, cfg.model.max_rows) for r in rows]
    dim = (cfg.model.embedding_dim or flavor.embedding_dim) + extra_cols
    names = table_names(cfg, len(rows))
    return [EmbeddingTableSpec(name, r, dim, pooling=pooling or cfg.model.table_pooling.get(name, cfg.model.pooling))
            for name, r in zip(names, rows)]


def tables_from_config(cfg, dim: int, *, default: Mapping[str, int] | None = None) -> list[EmbeddingTableSpec]:
    """A model's tables as its data has them: the contract for a model of one's own.

    With `data.source=prepared` (or `criteo`, `torchrec`) the dataset fills `model.table_sizes`, `model.table_names`
    and `model.table_pooling` before the model is built: one table per categorical column, named after it, with
    its vocabulary's rows and its multi-hot pooling. Generated data (`data.source=synthetic`) has no tables of its
    own: it draws ids for the tables the model declares, `default` ({name: rows}, in feature order). A user may
    also set `model.table_sizes` (and `model.table_names`) directly. `model.embedding_dim`, when set, replaces
    `dim`; `model.max_rows` caps every table; `model.pooling` is the pooling of tables the data says nothing of.

        self.tables = tables_from_config(cfg, dim=32, default={"user_id": 1_000_000, "item_id": 500_000})
    """
    if cfg.model.table_sizes:
        rows = list(cfg.model.table_sizes)
        names = table_names(cfg, len(rows))
    elif default:
        names, rows = list(default), list(default.values())
    else:
        raise ConfigError(f"model.table_sizes: empty with data.source={cfg.data.source}, and model.name="
                          f"{cfg.model.name} gives no default tables; expected data.source=prepared (the data's "
                          "tables), model.table_sizes=[...], or tables_from_config(cfg, dim, default={name: rows})")
    if cfg.model.max_rows:
        rows = [min(r, cfg.model.max_rows) for r in rows]
    dim = cfg.model.embedding_dim or dim
    return [EmbeddingTableSpec(name, r, dim, pooling=cfg.model.table_pooling.get(name, cfg.model.pooling))
            for name, r in zip(names, rows)]


def table_names(cfg, count: int) -> list[str]:
    """`model.table_names` (the data's column names) when it names `count` tables, else t0, t1, ..."""
    names = list(cfg.model.table_names)
    if not names:
        return [f"t{i}" for i in range(count)]
    if len(names) != count:
        raise ConfigError(f"model.table_names: {len(names)} names, but the model has {count} tables; expected "
                          f"{count} names (or none)")
    return names


# Criteo-shaped models (one bag per table per sample; multi-hot bags pooled) read generated click logs or a directory
# written by `disttrain data prepare` or `disttrain data criteo` (both `data.source=prepared`; `criteo` is the old name).
CTR_SOURCES = {"synthetic": "synthetic", "criteo": "criteo", "prepared": "criteo", "torchrec": "criteo"}
