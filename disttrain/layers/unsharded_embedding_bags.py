"""The plain, unsharded embedding-bag collection: one `nn.EmbeddingBag` per table.

Models declare their tables with it; `disttrain.parallelize` swaps it for the sharded collection
(`disttrain.sharding.sharded_embedding_bags`), which must compute exactly what this one computes.
"""

from __future__ import annotations

import torch
from torch import nn

from disttrain.batch import KeyedBags
from disttrain.tables import EmbeddingTableSpec, init_table_rows


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
            # Weights come from init_table_rows (never the global RNG), so model init is the same either way. On
            # meta an empty weight is passed too: initialising one there would import torch._dynamo (~1 s).
            weight = torch.empty(spec.num_rows, spec.dim, device="meta") if device == "meta" else init_table_rows(
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
