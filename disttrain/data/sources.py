"""The registry of data sources: registry key -> `SourceSpec` (disttrain.data.contract).

A model's spec maps the `data.source` values it accepts to keys here (DIEN reads `synthetic` as generated
behaviour sequences, `dien_synthetic`); the engine resolves that mapping and opens the source with `open_source`.
Users' sources are found the same way as users' models: an installed package's `disttrain.data_sources` entry
point, or an import path `package.module:attribute` naming a `SourceSpec` (or a function returning one).
"""

from __future__ import annotations

from disttrain.config import Config
from disttrain.data import dien, prepared, synthetic
from disttrain.data.contract import DataSource, SourceSpec
from disttrain.plugins import SOURCE_GROUP, resolve
from disttrain.tables import EmbeddingTableSpec

SOURCES: dict[str, SourceSpec] = {
    spec.name: spec for spec in (synthetic.SPEC, prepared.SPEC, dien.SPEC, dien.GENERATED_SPEC)
}


def source_spec(key: str) -> SourceSpec:
    """The source registered as `key`, an installed entry point, or an import path (`data.source` names it)."""
    return resolve(key, key="data.source", group=SOURCE_GROUP, kind=SourceSpec, what="a data source spec",
                   builtin=SOURCES)


def open_source(key: str, cfg: Config, tables: list[EmbeddingTableSpec], *, comm, rank: int) -> DataSource:
    """The batch source registered as `key` for this config and the model's tables (collective: every rank
    opens it, and a data error on any rank stops every rank with the same line)."""
    return source_spec(key).open(cfg, tables, comm, rank)
