"""The registry of data sources: registry key -> `SourceSpec` (disttrain.data.contract).

A model's spec maps the `data.source` values it accepts to keys here (DIEN reads `synthetic` as generated
behaviour sequences, `dien_synthetic`); the engine resolves that mapping and opens the source with `open_source`.
"""

from __future__ import annotations

from disttrain.config import Config
from disttrain.data import criteo, dien, synthetic
from disttrain.data.contract import DataSource, SourceSpec
from disttrain.errors import ConfigError
from disttrain.tables import EmbeddingTableSpec

SOURCES: dict[str, SourceSpec] = {
    spec.name: spec for spec in (synthetic.SPEC, criteo.SPEC, dien.SPEC, dien.GENERATED_SPEC)
}


def source_spec(key: str) -> SourceSpec:
    if key not in SOURCES:
        raise ConfigError(f"data source {key!r}: not registered; expected one of {', '.join(SOURCES)}")
    return SOURCES[key]


def open_source(key: str, cfg: Config, tables: list[EmbeddingTableSpec], *, comm, rank: int) -> DataSource:
    """The batch source registered as `key` for this config and the model's tables (collective: every rank
    opens it, and a data error on any rank stops every rank with the same line)."""
    return source_spec(key).open(cfg, tables, comm, rank)
