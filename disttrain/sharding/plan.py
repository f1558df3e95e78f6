"""A sharding plan is plain data: for each table, its sharding type and the shards (rank, rows, columns)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class ShardingType(str, Enum):
    """How one table is laid out across ranks.

    >>> ShardingType("row_wise").value
    'row_wise'
    """

    TABLE_WISE = "table_wise"  # the whole table on one rank
    ROW_WISE = "row_wise"  # rows split across ranks; partial bag sums are added
    COLUMN_WISE = "column_wise"  # embedding columns split across ranks; slices are concatenated
    DATA_PARALLEL = "data_parallel"  # replicated on every rank; row gradients gathered


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


@dataclass(frozen=True)
class TablePlan:
    name: str
    index: int  # position of the table (and its feature) in the model
    num_rows: int
    dim: int
    type: ShardingType
    shards: tuple[Shard, ...]

    @property
    def ranks(self) -> list[int]:
        return [s.rank for s in self.shards]


@dataclass(frozen=True)
class ShardingPlan:
    world_size: int
    optimizer: str
    tables: tuple[TablePlan, ...]
    embedding_dtype: str = "fp32"  # how rows are stored and exchanged: fp32 | bf16
    optimizer_state: tuple[int, int] = (0, 0)  # fp32 words of the optimizer's state per element, per row

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
                weights, state = shard.state_bytes(self.optimizer_state, self.weight_bytes)
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
                    {"rank": s.rank, "rows": list(s.rows), "cols": list(s.cols)} for s in t.shards
                ],
            }
            for t in self.tables
        ]
        return {"world_size": self.world_size, "optimizer": self.optimizer, "embedding_dtype": self.embedding_dtype,
                "tables": tables, "ranks": self.rank_bytes()}

    def describe(self) -> str:
        """A human-readable table of the plan."""
        lines = [f"sharding plan for {self.world_size} rank(s), optimizer state: {self.optimizer}"
                 + (f", {self.embedding_dtype} rows" if self.embedding_dtype != "fp32" else "")]
        lines.append(f"{'table':<10}{'rows':>12}{'dim':>5}  {'type':<14}shards (rank: rows x cols)")
        for t in self.tables:
            shards = ", ".join(f"{s.rank}: {s.num_rows}x{s.num_cols}" for s in t.shards)
            lines.append(f"{t.name:<10}{t.num_rows:>12}{t.dim:>5}  {t.type.value:<14}{shards}")
        lines.append(f"{'rank':<6}{'weights MiB':>12}{'optimizer MiB':>15}{'total MiB':>11}{'shards':>8}")
        for r in self.rank_bytes():
            lines.append(
                f"{r['rank']:<6}{r['weight_bytes'] / 2**20:>12.1f}{r['optimizer_bytes'] / 2**20:>15.1f}"
                f"{r['bytes'] / 2**20:>11.1f}{r['num_shards']:>8}"
            )
        return "\n".join(lines)
