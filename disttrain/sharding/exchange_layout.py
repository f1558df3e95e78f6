"""Where every shard sits in the all-to-all exchange, computed once per (local batch, bags per key).

A *slot* is one model-parallel shard as the exchange sees it: the feature it serves and its rows in the
owner's fused weight (all shards of one width on a rank live in one weight, looked up with one
`embedding_bag`). A *layout* holds, for one batch shape, every split size of the three all-to-alls and the
owner-side bookkeeping of the received bags. Pure functions of the plan; no communication.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from disttrain.sharding.plan import Shard, ShardingPlan, TablePlan
from disttrain.tables import EmbeddingTableSpec, bucket_of

MAX_LAYOUTS = 512


@dataclass(frozen=True)
class Slot:
    """One shard's place in the exchange: which feature it serves and where it lives in a fused weight."""

    table: TablePlan
    shard: Shard
    spec: EmbeddingTableSpec
    group: str = ""  # fused weight key on the owner ("mp<width>", "dp<width>", or "dyn<table>" for a dynamic table)
    base: int = 0  # first row of this shard in that fused weight

    def bags(self, batch: int, bags: tuple[int, ...]) -> int:
        return batch * bags[self.table.index]


@dataclass
class Layout:
    """Split sizes and per-bag lookups for one local batch size and bags per sample; built once, reused."""

    send_length_splits: list[int]
    recv_length_splits: list[int]
    bag_group: torch.Tensor  # owner side: group index of every received bag
    bag_base: torch.Tensor  # owner side: fused-row base of every received bag
    segments: list[tuple[int, int, int]]  # owner side: (group index, bags, width) per (source, slot)
    send_output_splits: list[int]  # owner -> sources
    recv_output_splits: list[int]  # sources <- owners
    recv_chunks: list[tuple[int, Slot]]  # source side: (elements, slot) per (owner, slot)


@dataclass
class StepState:
    """What backward needs from forward."""

    layout: Layout
    batch: int
    bags: tuple[int, ...]
    group_rows: list[torch.Tensor] = field(default_factory=list)
    group_bag_of_value: list[torch.Tensor | None] = field(default_factory=list)
    # Source side: 1/bag length for mean-pooled features ([B, bags, 1]); owners always sum.
    mean_scale: dict[int, torch.Tensor] = field(default_factory=dict)
    dp_rows: dict[str, torch.Tensor] = field(default_factory=dict)
    dp_bag_of_value: dict[str, torch.Tensor | None] = field(default_factory=dict)
    dp_lengths: dict[str, torch.Tensor] = field(default_factory=dict)


def bag_of_value(lengths: torch.Tensor, num_values: int) -> torch.Tensor | None:
    """Index of the bag each id belongs to; None when every bag holds exactly one id (the identity)."""
    if num_values == lengths.numel() and bool((lengths == 1).all()):
        return None
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)


def pool(weight, rows, lengths, bag_scale) -> torch.Tensor:
    offsets = torch.cumsum(lengths, 0) - lengths
    pooled = F.embedding_bag(rows, weight, offsets, mode="sum")
    return pooled * bag_scale.unsqueeze(1) if bag_scale is not None else pooled


def row_grads(grad_bags, bag_of_value, bag_scale) -> torch.Tensor:
    if bag_scale is not None:
        grad_bags = grad_bags * bag_scale.unsqueeze(1)
    return grad_bags if bag_of_value is None else grad_bags.index_select(0, bag_of_value)


def slots_of(tables: list[EmbeddingTableSpec], owned: list[tuple[TablePlan, Shard]]) -> list[Slot]:
    """The slots of the shards one rank owns, each placed in the fused weight of its width."""
    slots, next_row = [], {}
    for table, shard in owned:
        key = f"dyn{table.index}" if table.dynamic else f"mp{shard.num_cols}"  # a dynamic table grows: its own
        slots.append(Slot(table, shard, tables[table.index], key, next_row.get(key, 0)))
        next_row[key] = next_row.get(key, 0) + shard.num_rows
    return slots


def build_layout(plan: ShardingPlan, slots_of_rank: list[list[Slot]], rank: int, group_keys: list[str],
                 batch: int, bags: tuple[int, ...], device: torch.device) -> Layout:
    """The exchange of one step with `batch` local samples and `bags` bags per key, seen from `rank`."""
    world = plan.world_size
    mine = slots_of_rank[rank]
    group_index = {key: i for i, key in enumerate(group_keys)}
    bag_group, bag_base, segments = [], [], []
    for _source in range(world):
        for slot in mine:
            n = slot.bags(batch, bags)
            bag_group.append(torch.full((n,), group_index[slot.group], device=device))
            bag_base.append(torch.full((n,), slot.base, device=device))
            segments.append((group_index[slot.group], n, slot.shard.num_cols))
    cat = lambda parts, dtype: torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)  # noqa: E731
    return Layout(
        send_length_splits=[sum(s.bags(batch, bags) for s in slots_of_rank[d]) for d in range(world)],
        recv_length_splits=[sum(s.bags(batch, bags) for s in mine)] * world,
        bag_group=cat(bag_group, torch.int64),
        bag_base=cat(bag_base, torch.int64),
        segments=segments,
        send_output_splits=[sum(s.bags(batch, bags) * s.shard.num_cols for s in mine)] * world,
        recv_output_splits=[sum(s.bags(batch, bags) * s.shard.num_cols for s in slots_of_rank[d]) for d in range(world)],
        recv_chunks=[(s.bags(batch, bags) * s.shard.num_cols, s) for d in range(world) for s in slots_of_rank[d]],
    )


def interleave(per_group: list[torch.Tensor], segments) -> torch.Tensor:
    """Group outputs [bags_g, width_g] -> one flat buffer in (source, slot) order."""
    cursor = [0] * len(per_group)
    parts = []
    for g, bags, _width in segments:
        parts.append(per_group[g][cursor[g] : cursor[g] + bags].reshape(-1))
        cursor[g] += bags
    return torch.cat(parts)


def deinterleave(flat: torch.Tensor, segments, num_groups: int) -> list[torch.Tensor]:
    """The inverse of `interleave`: one flat buffer -> per group [bags_g, width_g]."""
    per_group: list[list[torch.Tensor]] = [[] for _ in range(num_groups)]
    pieces = torch.split(flat, [bags * width for _g, bags, width in segments])
    for (g, bags, width), piece in zip(segments, pieces):
        per_group[g].append(piece.view(bags, width))
    return [torch.cat(parts) for parts in per_group]


def route(slots_of_rank: list[list[Slot]], per_feature, device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The input dist's send side: lengths and ids to send, in (destination, slot) order, and the id count per
    destination. Row-wise shards get only the ids in their row range, rebased; a dynamic table's parts get the
    ids in their bucket range, as they are."""
    lengths_out, values_out, value_splits = [], [], []
    bag_ids: dict[int, torch.Tensor] = {}
    buckets: dict[int, torch.Tensor] = {}
    for dest_slots in slots_of_rank:
        count = 0
        for slot in dest_slots:
            index = slot.table.index
            lengths, values = per_feature[index]
            if slot.table.type.splits_rows:
                lo, hi = slot.shard.rows
                if slot.table.dynamic:
                    if index not in buckets:
                        buckets[index] = bucket_of(values)
                    keep = (buckets[index] >= lo) & (buckets[index] < hi)
                    lo = 0
                else:
                    keep = (values >= lo) & (values < hi)
                if index not in bag_ids:
                    bag_ids[index] = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device),
                                                             lengths)
                lengths = torch.bincount(bag_ids[index][keep], minlength=lengths.numel())
                values = values[keep] - lo
            lengths_out.append(lengths)
            values_out.append(values)
            count += values.numel()
        value_splits.append(count)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    return (torch.cat(lengths_out) if lengths_out else empty, torch.cat(values_out) if values_out else empty,
            value_splits)
