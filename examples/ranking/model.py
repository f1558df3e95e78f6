"""A ranking model with an interaction of one's own, trained by disttrain on sharded tables.

The interaction is FiBiNET's bilinear one ("field-all" type): for every pair of feature vectors (the bottom MLP's
output and each table's pooled embedding), `<W e_i, e_j>` with one learned W, so each pair's product is weighted
per dimension pair. The pair scores and the bottom output go through the top MLP. Nothing in this file knows
about ranks: disttrain shards the tables and makes the rest data-parallel.

    disttrain launch examples/ranking/config.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disttrain.batch import KeyedBags
from disttrain.layers import EmbeddingBagCollection
from disttrain.models.spec import CTR_SOURCES, ModelSpec, config_tables


@dataclass(frozen=True)
class RankingFlavor:
    embedding_dim: int
    bottom: tuple[int, ...]  # the last equals embedding_dim
    top: tuple[int, ...]  # the last is 1
    table_rows: tuple[int, ...]


FLAVORS = {
    "debug": RankingFlavor(8, (16, 8), (32, 1), (50, 101, 7, 33)),
    "criteo": RankingFlavor(16, (256, 64, 16), (256, 64, 1), (100_000,) * 26),
}


class BilinearInteraction(nn.Module):
    """Pairs i < j of V vectors [B, V, D] -> [B, V(V-1)/2] scores `<W e_i, e_j>`, one W [D, D] for all pairs."""

    def __init__(self, num_vectors: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim) + 0.01 * torch.randn(dim, dim))
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, vectors_BVD: torch.Tensor) -> torch.Tensor:
        projected = vectors_BVD @ self.weight  # [B, V, D]
        return (projected[:, self.rows] * vectors_BVD[:, self.cols]).sum(dim=2)


def mlp(in_features: int, sizes: tuple[int, ...], *, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, out_features in enumerate(sizes):
        layers.append(nn.Linear(in_features, out_features))
        if i < len(sizes) - 1 or last_activation:
            layers.append(nn.ReLU())
        in_features = out_features
    return nn.Sequential(*layers)


class BilinearRanker(nn.Module):
    def __init__(self, *, num_dense: int, tables, bottom: tuple[int, ...], top: tuple[int, ...], seed: int = 0,
                 embedding_device: str = "cpu"):
        super().__init__()
        torch.manual_seed(seed)
        dim = tables[0].dim
        self.tables = list(tables)
        self.embeddings: nn.Module = EmbeddingBagCollection(self.tables, seed=seed, device=embedding_device)
        self.bottom = mlp(num_dense, bottom, last_activation=True)
        vectors = len(tables) + 1
        self.interaction = BilinearInteraction(vectors, dim)
        self.top = mlp(dim + vectors * (vectors - 1) // 2, top, last_activation=False)

    def forward(self, dense: torch.Tensor, sparse: KeyedBags) -> torch.Tensor:
        bottom = self.bottom(dense)
        vectors = torch.cat([bottom.unsqueeze(1), *self.embeddings(sparse)], dim=1)
        return self.top(torch.cat([bottom, self.interaction(vectors)], dim=1)).squeeze(1)


def build(cfg, *, embedding_device: str = "cpu") -> BilinearRanker:
    flavor = FLAVORS[cfg.model.flavor]
    tables = config_tables(cfg, flavor)  # model.table_sizes, model.max_rows and model.embedding_dim apply
    dim = tables[0].dim
    return BilinearRanker(num_dense=cfg.data.num_dense, tables=tables, bottom=flavor.bottom[:-1] + (dim,),
                          top=flavor.top, seed=cfg.train.seed, embedding_device=embedding_device)


SPEC = ModelSpec(name="bilinear_ranker", flavors=FLAVORS, build=build, data_sources=CTR_SOURCES,
                 description="ranking with a bilinear (FiBiNET) interaction of one's own")
