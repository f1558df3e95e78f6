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


# Dynamic tables (raw 64-bit ids): an id's owner is its bucket, the top bits of mix64(id); buckets are what
# plans split across ranks, so resharding moves whole buckets.
NUM_BUCKETS = 4096
BUCKET_SHIFT = 64 - 12
_M1, _M2 = -49064778989728563, -4265267296055464877  # murmur3's fmix64 constants as signed int64
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 64-bit finalizer on int64 (wrapping arithmetic): a bijection whose every output bit depends on
    every input bit. The same values as on uint64 (tests compare with numpy)."""
    x = x ^ _shr(x, 33)
    x = x * _M1
    x = x ^ _shr(x, 33)
    x = x * _M2
    return x ^ _shr(x, 33)


def bucket_of(ids: torch.Tensor) -> torch.Tensor:
    """The bucket (0 .. NUM_BUCKETS-1) of every raw id: the rank owning the bucket holds the id's row."""
    return _shr(mix64(ids), BUCKET_SHIFT)


def dynamic_init_rows(*, seed: int, table_index: int, ids: torch.Tensor, dim: int, num_rows: int) -> torch.Tensor:
    """The initial row [len(ids), dim] of every raw id of a dynamic table: a pure function of (seed, table, id),
    so rows do not depend on the world size or the order ids arrive in. Uniform(+-sqrt(1/num_rows)) as fixed
    tables, with `num_rows` the table's declared (expected) size."""
    salt = mix64(torch.tensor([seed * 1_000_003 + table_index], dtype=torch.int64))
    base = mix64(ids.to(torch.int64) ^ salt.to(ids.device))
    cols = torch.arange(1, dim + 1, dtype=torch.int64, device=ids.device) * _GOLDEN
    bits = _shr(mix64(base.unsqueeze(1) + cols), 40)  # 24 uniform bits
    bound = (1.0 / max(num_rows, 1)) ** 0.5
    return bits.to(torch.float32).mul_(2.0 * bound / 2**24).sub_(bound)


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


def dynamic_indices(wanted: list[str], tables: list[EmbeddingTableSpec]) -> list[int]:
    """Positions of the tables `model.dynamic_tables` names (`all`, names or `t<i>` aliases; others ignored here,
    the config check names them)."""
    if "all" in wanted:
        return list(range(len(tables)))
    names = set(by_alias(dict.fromkeys(wanted), tables))
    return [i for i, t in enumerate(tables) if t.name in names]


def raw_id_tables(cfg, tables: list[EmbeddingTableSpec]) -> tuple[int, ...]:
    """With `data.raw_ids`: the positions of the tables whose generated ids are spread over int64 (the dynamic
    ones); () without it."""
    return tuple(dynamic_indices(cfg.model.dynamic_tables, tables)) if cfg.data.raw_ids else ()


def spread_ids(values: torch.Tensor, per_table: torch.Tensor, raw: tuple[int, ...]) -> torch.Tensor:
    """`data.raw_ids`: the ids of tables `raw` (values in table order, `per_table` of them per table) mapped onto
    the whole int64 space by a bijection per table (mix64 of the id salted by the table), so a synthetic planted
    signal, a function of the original id, is unchanged."""
    index = torch.arange(per_table.numel(), dtype=torch.int64)
    salt = torch.repeat_interleave(index * 0x5851F42D4C957F2D, per_table)
    chosen = torch.repeat_interleave(torch.isin(index, torch.tensor(raw, dtype=torch.int64)), per_table)
    return torch.where(chosen, mix64(values ^ salt), values)
