"""A two-tower retrieval model trained by disttrain: user and item towers over sharded embedding tables.

The user tower reads the dense features and the user's tables, the item tower the item's tables; the logit is the
scaled dot product of the two tower outputs. It is a plain module: disttrain shards its tables (any strategy, any
number of ranks) and makes its towers data-parallel, because the model declares what the contract asks:

    model.tables       its EmbeddingTableSpec list (names are the features' names: user_id, item_id, ...)
    model.embeddings   an EmbeddingBagCollection over them (disttrain swaps it for the sharded one)
    forward(dense, sparse) -> logits [batch]

and `SPEC` says how to build it, its flavors and the data it reads. Train it with

    disttrain launch examples/two_tower/config.yaml
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disttrain.batch import KeyedBags
from disttrain.layers import EmbeddingBagCollection
from disttrain.models.spec import CTR_SOURCES, ModelSpec
from disttrain.tables import EmbeddingTableSpec


@dataclass(frozen=True)
class TwoTowerFlavor:
    embedding_dim: int
    user_rows: tuple[int, ...]  # user_id, user_country, ... (one table each)
    item_rows: tuple[int, ...]  # item_id, item_category, ...
    tower: tuple[int, ...]  # hidden sizes of each tower; the last is the space both towers map into


FLAVORS = {
    "debug": TwoTowerFlavor(8, (50, 11), (101, 7), (16, 8)),
    "base": TwoTowerFlavor(32, (1_000_000, 200), (500_000, 1_000), (256, 64)),
}
USER_FEATURES = ("user_id", "user_country")
ITEM_FEATURES = ("item_id", "item_category")


def tower(in_features: int, sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, out_features in enumerate(sizes):
        layers.append(nn.Linear(in_features, out_features))
        if i < len(sizes) - 1:
            layers.append(nn.ReLU())
        in_features = out_features
    return nn.Sequential(*layers)


class TwoTower(nn.Module):
    def __init__(self, *, num_dense: int, flavor: TwoTowerFlavor, dim: int, seed: int = 0,
                 embedding_device: str = "cpu"):
        super().__init__()
        torch.manual_seed(seed)
        users = [EmbeddingTableSpec(name, rows, dim) for name, rows in zip(USER_FEATURES, flavor.user_rows)]
        items = [EmbeddingTableSpec(name, rows, dim) for name, rows in zip(ITEM_FEATURES, flavor.item_rows)]
        self.tables = users + items
        self.num_user_tables = len(users)
        self.embeddings: nn.Module = EmbeddingBagCollection(self.tables, seed=seed, device=embedding_device)
        self.user_tower = tower(num_dense + len(users) * dim, flavor.tower)
        self.item_tower = tower(len(items) * dim, flavor.tower)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, dense: torch.Tensor, sparse: KeyedBags) -> torch.Tensor:
        pooled = [p.flatten(1) for p in self.embeddings(sparse)]  # per table [B, dim]
        user = self.user_tower(torch.cat([dense, *pooled[: self.num_user_tables]], dim=1))
        item = self.item_tower(torch.cat(pooled[self.num_user_tables :], dim=1))
        return (user * item).sum(dim=1) * self.scale + self.bias


def build(cfg, *, embedding_device: str = "cpu") -> TwoTower:
    flavor = FLAVORS[cfg.model.flavor]
    return TwoTower(num_dense=cfg.data.num_dense, flavor=flavor, dim=cfg.model.embedding_dim or flavor.embedding_dim,
                    seed=cfg.train.seed, embedding_device=embedding_device)


SPEC = ModelSpec(name="two_tower", flavors=FLAVORS, build=build, data_sources=CTR_SOURCES,
                 description="two-tower retrieval: user and item towers over sharded tables, dot-product logit")
