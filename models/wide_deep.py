"""Wide&Deep (Cheng et al. 2016) as in Intel's `wide_deep_large_ds` (the model ByteMLPerf serves), a plain module.

Intel's model: 26 hashed categorical columns (1,000 buckets each) feed both parts. The wide part is a linear
model over them (no crossed columns in that recipe); the deep part is the 13 scaled numerics plus a 32-dim
embedding of each column through a 1024-512-256 ReLU MLP; the logit is the sum of the two parts' logits.

Embedding fusion: each column's wide weight is stored as one extra column of its embedding table (dim 32 + 1),
so one lookup (one all-to-all when sharded) serves both parts. Distribution is applied from outside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disttrain.batch import KeyedBags
from disttrain.layers import EmbeddingBagCollection
from disttrain.models.dlrm import mlp
from disttrain.models.spec import CTR_SOURCES, ModelSpec, config_tables
from disttrain.tables import EmbeddingTableSpec


@dataclass(frozen=True)
class WideDeepFlavor:
    embedding_dim: int
    hidden: tuple[int, ...]
    table_rows: tuple[int, ...]


WIDE_DEEP_FLAVORS = {
    "debug": WideDeepFlavor(8, (32, 16), (50, 101, 7, 33)),
    # Intel wide_deep_large_ds: 26 columns hashed to 1,000 buckets, dim 32, DNN 1024-512-256.
    "intel": WideDeepFlavor(32, (1024, 512, 256), (1000,) * 26),
}


class WideDeep(nn.Module):
    def __init__(self, *, num_dense: int, tables: list[EmbeddingTableSpec], hidden: tuple[int, ...], seed: int = 0,
                 embedding_device: str = "cpu"):
        super().__init__()
        dim = tables[0].dim - 1  # the last column is the wide weight
        if any(t.dim != dim + 1 for t in tables):
            raise ValueError("Wide&Deep tables share one dim: the embedding dim plus the wide weight")
        self.tables = list(tables)
        self.embedding_dim = dim
        torch.manual_seed(seed)
        self.embeddings: nn.Module = EmbeddingBagCollection(tables, seed=seed, device=embedding_device)
        self.deep = mlp(num_dense + len(tables) * dim, (*hidden, 1), last_activation=False)
        self.wide_bias = nn.Parameter(torch.zeros(1))

    def forward(self, dense: torch.Tensor, sparse: KeyedBags) -> torch.Tensor:
        """Logits [batch]."""
        fused = torch.cat(self.embeddings(sparse), dim=1)  # [B, T, dim + 1]
        deep_in = torch.cat([dense, fused[:, :, : self.embedding_dim].flatten(1)], dim=1)
        wide = fused[:, :, self.embedding_dim].sum(dim=1) + self.wide_bias
        return self.deep(deep_in).squeeze(1) + wide


def build_wide_deep(cfg, *, embedding_device: str = "cpu") -> WideDeep:
    base = WIDE_DEEP_FLAVORS[cfg.model.flavor]
    tables = config_tables(cfg, base, extra_cols=1)  # the extra column: each id's wide weight
    return WideDeep(num_dense=cfg.data.num_dense, tables=tables, hidden=base.hidden, seed=cfg.train.seed,
                    embedding_device=embedding_device)


SPEC = ModelSpec(
    name="wide_deep",
    flavors=WIDE_DEEP_FLAVORS,
    build=build_wide_deep,
    data_sources=CTR_SOURCES,
    description="Wide&Deep as Intel's wide_deep_large_ds (the wide weight fused into each table)",
)
