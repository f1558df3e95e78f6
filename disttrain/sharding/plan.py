"""A sharding plan is plain data: for each table, its sharding type and the shards (rank, rows, columns)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from disttrain.tables import NUM_BUCKETS


class ShardingType(str, Enum):
    """How one table is laid out across ranks.

    >>> ShardingType("row_wise").value
    'row_wise'
    """

    TABLE_WISE = "table_wise"  # the whole table on one rank
    ROW_WISE = "row_wise"  # rows split across ranks; partial bag sums are added
    TABLE_ROW_WISE = "table_row_wise"  # rows split across the ranks of one node (its lookups stay in the node)
    COLUMN_WISE = "column_wise"  # embedding columns split across ranks; slices are concatenated
    DATA_PARALLEL = "data_parallel"  # replicated on every rank; row gradients gathered

    @property
    def splits_rows(self) -> bool:
        """Shards hold row ranges and a bag's vector is the sum of their partial sums."""
        return self in (ShardingType.ROW_WISE, ShardingType.TABLE_ROW_WISE)


# Bytes per stored embedding element, by model.embedding_dtype (optimizer state is always fp32).
WEIGHT_BYTES = {"fp32": 4, "bf16": 2}


@dataclass(frozen=True)
class Shard:
    rank: int
    rows: tuple[int, int]  # [start, stop)
    cols: tuple[int, int]  # [start, stop)

    @property
    def num_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def num_cols(self) -> int:
        return self.cols[1] - self.cols[0]

    def state_bytes(self, optimizer_state: tuple[int, int], weight_bytes: int = 4) -> tuple[int, int]:
        """(weights, optimizer state) bytes; `weight_bytes` per stored element (bf16: 2); `optimizer_state`:
        fp32 words of optimizer state per element and per row (`disttrain.optim.OPTIMIZERS`)."""
        per_elem, per_row = optimizer_state
        weights = self.num_rows * self.num_cols * weight_bytes
        return weights, (self.num_rows * self.num_cols * per_elem + self.num_rows * per_row) * 4


def dynamic_rows(num_rows: int, buckets: int, capacity: int = 0) -> int:
    """Rows the part of a dynamic table holding `buckets` of its NUM_BUCKETS is expected to hold: the buckets'
    share of the declared rows, capped at the capacity per rank (0 = unbounded). The planner places by it and the
    plan reports it."""
    share = -(-num_rows * buckets // NUM_BUCKETS)
    return min(share, capacity) if capacity > 0 else share


@dataclass(frozen=True)
class DynamicSettings:
    """Dynamic tables' rules (`model.dynamic_*`): admission after `min_count` sightings, eviction after
    `ttl_steps` unseen steps (0 = never) or past `capacity` rows per rank (0 = unbounded)."""

    min_count: int = 1
    ttl_steps: int = 0
    capacity: int = 0


@dataclass(frozen=True)
class TablePlan:
    name: str
    index: int  # position of the table (and its feature) in the model
    num_rows: int  # a dynamic table: its declared size, the rows it is expected to hold
    dim: int
    type: ShardingType
    shards: tuple[Shard, ...]
    # True: raw 64-bit ids, rows created on first sight; a shard's `rows` are then a range of id buckets
    # (disttrain.tables.NUM_BUCKETS), not of rows.
    dynamic: bool = False
    bags_per_sample: int = 1  # bags each sample looks up (a sequence feature's positions)

    @property
    def ranks(self) -> list[int]:
        return [s.rank for s in self.shards]

    def expected_rows(self, shard: Shard, capacity: int = 0) -> int:
        """Rows `shard` holds: its rows, or for a dynamic table its buckets' share of the declared size, capped
        at the capacity."""
        return dynamic_rows(self.num_rows, shard.num_rows, capacity) if self.dynamic else shard.num_rows


@dataclass(frozen=True)
class ShardingPlan:
    world_size: int
    optimizer: str
    tables: tuple[TablePlan, ...]
    embedding_dtype: str = "fp32"  # how rows are stored and exchanged: fp32 | bf16
    optimizer_state: tuple[int, int] = (0, 0)  # fp32 words of the optimizer's state per element, per row
    dynamic: DynamicSettings = DynamicSettings()

    @property
    def weight_bytes(self) -> int:
        return WEIGHT_BYTES[self.embedding_dtype]

    def shards_on(self, rank: int) -> list[tuple[TablePlan, Shard]]:
        """Model-parallel shards owned by `rank`, in a fixed order every rank agrees on."""
        return [
            (table, shard)
            for table in self.tables
            if table.type != ShardingType.DATA_PARALLEL
            for shard in table.shards
            if shard.rank == rank
        ]

    def rank_bytes(self) -> list[dict[str, int]]:
        out = [{"rank": r, "weight_bytes": 0, "optimizer_bytes": 0, "num_shards": 0} for r in range(self.world_size)]
        for table in self.tables:
            for shard in table.shards:
                rows = table.expected_rows(shard, self.dynamic.capacity)
                sized = Shard(shard.rank, (0, rows), shard.cols)
                weights, state = sized.state_bytes(self.optimizer_state, self.weight_bytes)
                out[shard.rank]["weight_bytes"] += weights
                out[shard.rank]["optimizer_bytes"] += state
                out[shard.rank]["num_shards"] += 1
        for row in out:
            row["bytes"] = row["weight_bytes"] + row["optimizer_bytes"]
        return out

    def to_json(self) -> dict[str, Any]:
        tables = [
            {
                "name": t.name,
                "type": t.type.value,
                "ranks": t.ranks,
                "rows": t.num_rows,
                "dim": t.dim,
                "shards": [
                    {"rank": s.rank, "rows": list(s.rows), "cols": list(s.cols)}
                    | ({"expected_live_rows": t.expected_rows(s, self.dynamic.capacity)} if t.dynamic else {})
                    for s in t.shards
                ],
            } | ({"dynamic": True, "capacity_per_rank": self.dynamic.capacity,
                  "expected_live_rows": sum(t.expected_rows(s, self.dynamic.capacity) for s in t.shards)}
                 if t.dynamic else {})
            for t in self.tables
        ]
        out = {"world_size": self.world_size, "optimizer": self.optimizer, "embedding_dtype": self.embedding_dtype,
               "tables": tables, "ranks": self.rank_bytes()}
        if any(t.dynamic for t in self.tables):
            out["dynamic"] = {"min_count": self.dynamic.min_count, "ttl_steps": self.dynamic.ttl_steps,
                              "capacity": self.dynamic.capacity, "buckets": NUM_BUCKETS}
        return out

    def describe(self) -> str:
        """A human-readable summary: a line per table, then the ranks (`disttrain.sharding.plan_text`)."""
        from disttrain.sharding.plan_text import describe

        return describe(self)
