"""Embedding tables as data, and their deterministic initial rows.

A table's lookups are *bags*: a pooled feature has one bag per sample (multi-hot bags are summed or averaged);
an unpooled sequence feature (DIEN's behaviour history) has `bags_per_sample` bags per sample, each holding 0
or 1 id, so a sequence lookup is the same operation as a pooled one with more bags. The sharded layer
therefore serves both with one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INIT_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class EmbeddingTableSpec:
    name: str
    num_rows: int
    dim: int
    pooling: str = "sum"  # "sum" | "mean" | "none" (sequence: bags_per_sample positions of 0/1 id)
    bags_per_sample: int = 1

    @property
    def bag_mode(self) -> str:
        return "mean" if self.pooling == "mean" else "sum"


def _chunk_seed(seed: int, table_index: int, chunk: int) -> int:
    return ((seed * 1_000_003 + table_index) * 1_000_033 + chunk) % (2**63 - 1)


def init_table_rows(
    *, seed: int, table_index: int, spec: EmbeddingTableSpec, rows: tuple[int, int], cols: tuple[int, int]
) -> torch.Tensor:
    """Initial weights of rows [r0, r1) and columns [c0, c1) of a table.

    Rows are drawn in fixed chunks seeded by (seed, table, chunk), so any shard of a table gets exactly the
    values the unsharded table has, whatever the plan or world size. Uniform(+-sqrt(1/num_rows)) as in DLRM.
    """
    r0, r1 = rows
    c0, c1 = cols
    bound = (1.0 / spec.num_rows) ** 0.5
    out = torch.empty(r1 - r0, c1 - c0)
    first_chunk, last_chunk = r0 // INIT_CHUNK_ROWS, (max(r1, 1) - 1) // INIT_CHUNK_ROWS
    for chunk in range(first_chunk, last_chunk + 1):
        lo = chunk * INIT_CHUNK_ROWS
        hi = min(lo + INIT_CHUNK_ROWS, spec.num_rows)
        gen = torch.Generator().manual_seed(_chunk_seed(seed, table_index, chunk))
        block = torch.empty(hi - lo, spec.dim).uniform_(-bound, bound, generator=gen)
        a, b = max(lo, r0), min(hi, r1)
        if b > a:
            out[a - r0 : b - r0] = block[a - lo : b - lo, c0:c1]
    return out


def by_alias(names: dict[str, object], tables: list[EmbeddingTableSpec]) -> dict[str, object]:
    """Keys naming tables by name or by the alias `t<i>` (table i), turned into the tables' names; a key that is
    neither is kept (the caller names it in its error)."""
    own = {t.name for t in tables}
    out = {}
    for key, value in names.items():
        if key not in own and key.startswith("t") and key[1:].isdigit() and int(key[1:]) < len(tables):
            key = tables[int(key[1:])].name
        out[key] = value
    return out
