"""What one step reads: a batch of dense features, labels and sparse features (`KeyedBags`).

Every data source produces `Batch`es; the models, the sharded and unsharded embedding layers and serving read
them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


@dataclass
class Batch:
    dense: torch.Tensor  # [B, num_dense] float32
    labels: torch.Tensor  # [B] float32
    sparse: KeyedBags
    probabilities: torch.Tensor | None = None  # the planted model's click probability (synthetic only)
    valid: torch.Tensor | None = None  # [B] bool: False for padding rows of a last, partial eval batch

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        move = lambda t: t.to(device, non_blocking=True) if t is not None else None  # noqa: E731
        return Batch(move(self.dense), move(self.labels), self.sparse.to(device, non_blocking=True),
                     move(self.probabilities), move(self.valid))
