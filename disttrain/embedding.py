"""Embedding tables as data, the batch format for sparse features, and the plain (unsharded) collection.

A feature's lookups are *bags*: a pooled feature has one bag per sample (multi-hot bags are summed or
averaged); an unpooled sequence feature (DIEN's behaviour history) has `bags_per_sample` bags per sample,
each holding 0 or 1 id, so a sequence lookup is the same operation as a pooled one with more bags. The
sharded layer therefore serves both with one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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


@dataclass
class KeyedBags:
    """Sparse features of a batch: for each key, `batch_size * bags_per_key[k]` bag lengths and the ids.

    `lengths` and `values` are the per-key tensors concatenated in key order (int64).
    """

    keys: tuple[str, ...]
    bags_per_key: tuple[int, ...]
    batch_size: int
    lengths: torch.Tensor
    values: torch.Tensor

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> KeyedBags:
        return KeyedBags(self.keys, self.bags_per_key, self.batch_size,
                         self.lengths.to(device, non_blocking=non_blocking),
                         self.values.to(device, non_blocking=non_blocking))

    def split(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per key: (lengths [B*bags], values [sum(lengths)])."""
        bag_counts = [self.batch_size * b for b in self.bags_per_key]
        lengths = torch.split(self.lengths, bag_counts)
        value_counts = [int(x) for x in torch.stack([lg.sum() for lg in lengths]).tolist()] if lengths else []
        values = torch.split(self.values, value_counts)
        return list(zip(lengths, values))

    def slice_samples(self, start: int, stop: int) -> KeyedBags:
        """The samples [start, stop) of this batch (used to cut a global batch into local ones)."""
        parts = self.split()
        new_lengths, new_values = [], []
        for (lengths, values), bags in zip(parts, self.bags_per_key):
            offsets = torch.cumsum(lengths, 0) - lengths
            lo, hi = start * bags, stop * bags
            first = int(offsets[lo]) if lo < len(lengths) else int(lengths.sum())
            last = int(offsets[hi - 1] + lengths[hi - 1]) if hi > lo else first
            new_lengths.append(lengths[lo:hi])
            new_values.append(values[first:last])
        return KeyedBags(
            self.keys, self.bags_per_key, stop - start, torch.cat(new_lengths), torch.cat(new_values)
        )


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


class EmbeddingBagCollection(nn.Module):
    """Plain, unsharded tables: one `nn.EmbeddingBag` per table. The reference the sharded layer must match."""

    def __init__(
        self, tables: list[EmbeddingTableSpec], *, seed: int = 0, sparse: bool = True, device: str = "cpu"
    ):
        """`device="meta"` declares the tables without allocating them (the sharded layer allocates shards)."""
        super().__init__()
        self.tables = list(tables)
        self.seed = seed
        self.bags = nn.ModuleList()
        for index, spec in enumerate(self.tables):
            # Weights come from init_table_rows (never the global RNG), so model init is the same either way.
            weight = None if device == "meta" else init_table_rows(
                seed=seed, table_index=index, spec=spec, rows=(0, spec.num_rows), cols=(0, spec.dim)
            )
            self.bags.append(
                nn.EmbeddingBag(
                    spec.num_rows, spec.dim, mode=spec.bag_mode, sparse=sparse, device=device, _weight=weight
                )
            )

    def forward(self, features: KeyedBags) -> list[torch.Tensor]:
        """Per table: [batch, bags, dim] with `features.bags_per_key` bags (a sequence may be shorter than
        its table's `bags_per_sample`)."""
        out = []
        for spec, bag, bags, (lengths, values) in zip(self.tables, self.bags, features.bags_per_key, features.split()):
            offsets = torch.cumsum(lengths, 0) - lengths
            pooled = bag(values, offsets)
            out.append(pooled.view(features.batch_size, bags, spec.dim))
        return out

