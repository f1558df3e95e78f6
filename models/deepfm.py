"""DeepFM (Guo et al. 2017) as in DeepRec's model zoo (`modelzoo/deepfm`), a plain module.

DeepRec's model: 13 numeric and 26 categorical Criteo columns; every categorical column is hashed to 10,000
buckets and embedded in 16 dims (mean combiner), one embedding shared by all three parts:
- first order: the plain sum of the numerics and of every embedding component (no weights: DeepRec's
  `reduce_sum(input_layer(wide_columns))`);
- second order: the FM term `0.5 * ((sum_f e_f)^2 - sum_f e_f^2)`, kept as a 16-vector;
- deep: the numerics and the embeddings through 1024-256-32 (ReLU, then BatchNorm);
- final: [deep, first order, FM] through 128-64 (ReLU, BatchNorm), then one logit.
DeepRec's BatchNorm runs in training mode also at evaluation, so it always normalises with the batch's
statistics; on N ranks those are the global batch's (`disttrain.layers.BatchMoments`). DeepRec trains the
probability with squared error; disttrain's trainer uses log loss for every model (stated in docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disttrain.batch import KeyedBags
from disttrain.layers import BatchNorm, EmbeddingBagCollection
from disttrain.models.spec import CTR_SOURCES, ModelSpec, config_tables
from disttrain.tables import EmbeddingTableSpec


@dataclass(frozen=True)
class DeepFMFlavor:
    embedding_dim: int
    hidden: tuple[int, ...]
    final: tuple[int, ...]
    table_rows: tuple[int, ...]


DEEPFM_FLAVORS = {
    "debug": DeepFMFlavor(8, (32, 16), (16, 8), (50, 101, 7, 33)),
    # DeepRec modelzoo/deepfm: 26 columns hashed to 10,000 buckets, dim 16, DNN 1024-256-32, final 128-64.
    "deeprec": DeepFMFlavor(16, (1024, 256, 32), (128, 64), (10000,) * 26),
}


def dense_bn_stack(in_features: int, sizes: tuple[int, ...]) -> nn.Sequential:
    """Dense + ReLU + BatchNorm per layer (DeepRec's `_dnn` with use_bn), Glorot-uniform weights as TF."""
    layers: list[nn.Module] = []
    for out_features in sizes:
        linear = nn.Linear(in_features, out_features)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU(), BatchNorm(out_features)]
        in_features = out_features
    return nn.Sequential(*layers)


class DeepFM(nn.Module):
    def __init__(self, *, num_dense: int, tables: list[EmbeddingTableSpec], hidden: tuple[int, ...],
                 final: tuple[int, ...], seed: int = 0, embedding_device: str = "cpu"):
        super().__init__()
        dim = tables[0].dim
        if any(t.dim != dim for t in tables):
            raise ValueError("DeepFM's FM term needs one embedding dim shared by all tables")
        self.tables = list(tables)
        torch.manual_seed(seed)
        self.embeddings: nn.Module = EmbeddingBagCollection(tables, seed=seed, device=embedding_device)
        self.deep = dense_bn_stack(num_dense + len(tables) * dim, hidden)
        self.final = dense_bn_stack(hidden[-1] + 1 + dim, final)
        self.out = nn.Linear(final[-1], 1)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, dense: torch.Tensor, sparse: KeyedBags) -> torch.Tensor:
        """Logits [batch]."""
        emb_BFD = torch.cat(self.embeddings(sparse), dim=1)
        flat = torch.cat([dense, emb_BFD.flatten(1)], dim=1)
        first_order = flat.sum(dim=1, keepdim=True)
        total = emb_BFD.sum(dim=1)
        fm = 0.5 * (total * total - (emb_BFD * emb_BFD).sum(dim=1))
        deep = self.deep(flat)
        return self.out(self.final(torch.cat([deep, first_order, fm], dim=1))).squeeze(1)


def build_deepfm(cfg, *, embedding_device: str = "cpu") -> DeepFM:
    base = DEEPFM_FLAVORS[cfg.model.flavor]
    tables = config_tables(cfg, base, pooling="mean")
    return DeepFM(num_dense=cfg.data.num_dense, tables=tables, hidden=base.hidden, final=base.final,
                  seed=cfg.train.seed, embedding_device=embedding_device)


SPEC = ModelSpec(
    name="deepfm",
    flavors=DEEPFM_FLAVORS,
    build=build_deepfm,
    data_sources=CTR_SOURCES,
    description="DeepFM as DeepRec's model zoo (global-batch BatchNorm)",
)
