"""Dynamic tables at serving time: a frozen id -> row map, and the plain collection that reads it.

A trained dynamic table is exported as its live ids in ascending order (`ids`, [n]) and a weight of n + 1 rows
whose row 0 is the default row (zeros) and row i + 1 belongs to ids[i]. Looking up is a binary search
(`torch.searchsorted`): no hash map is needed once nothing is admitted. Ids without a row read the default row
and are counted per table (`unknown`).
"""

from __future__ import annotations

import torch
from torch import nn

from disttrain.batch import KeyedBags
from disttrain.tables import EmbeddingTableSpec


def rows_of(ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(row of every value in the exported weight, how many had none): ids[i] -> i + 1, unknown -> 0."""
    if not ids.numel():
        return torch.zeros_like(values), int(values.numel())
    at = torch.searchsorted(ids, values).clamp_(max=ids.numel() - 1)
    found = ids.index_select(0, at) == values
    return torch.where(found, at + 1, 0), int(values.numel() - found.sum())


class _Ids(nn.Module):
    """Buffers `t<index>`: a dynamic table's sorted ids (a module so they sit in the state_dict)."""

    def __init__(self, sizes: dict[int, int], device):
        super().__init__()
        for index, n in sizes.items():
            self.register_buffer(f"t{index}", torch.empty(n, dtype=torch.int64, device=device))


class ServingEmbeddingBags(nn.Module):
    """The plain collection of a model with dynamic tables: `bags.<i>.weight` as `EmbeddingBagCollection` has
    (a dynamic table's with its default row first), plus `dynamic_ids.t<i>`."""

    def __init__(self, tables: list[EmbeddingTableSpec], dynamic_rows: dict[int, int], *, device="meta"):
        """`dynamic_rows`: table index -> live ids (the weight has one row more)."""
        super().__init__()
        self.tables = list(tables)
        self.bags = nn.ModuleList(
            nn.EmbeddingBag(dynamic_rows[i] + 1 if i in dynamic_rows else spec.num_rows, spec.dim,
                            mode=spec.bag_mode, device=device)
            for i, spec in enumerate(self.tables))
        self.dynamic_ids = _Ids(dynamic_rows, device)
        self.unknown = dict.fromkeys((self.tables[i].name for i in dynamic_rows), 0)

    def ids_of(self, index: int) -> torch.Tensor | None:
        return getattr(self.dynamic_ids, f"t{index}", None)

    def forward(self, features: KeyedBags) -> list[torch.Tensor]:
        out = []
        for index, (spec, bag, bags, (lengths, values)) in enumerate(
                zip(self.tables, self.bags, features.bags_per_key, features.split())):
            ids = self.ids_of(index)
            if ids is not None:
                values, unknown = rows_of(ids, values)
                self.unknown[spec.name] += unknown
            offsets = torch.cumsum(lengths, 0) - lengths
            out.append(bag(values, offsets).view(features.batch_size, bags, spec.dim))
        return out
