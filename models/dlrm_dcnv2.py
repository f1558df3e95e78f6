"""DLRM-DCNv2 (Wang et al. 2021, "DCN V2"), the DLRM of MLPerf Training's recommendation benchmark since v2.1, as a
plain module: bottom MLP, pooled embeddings, a low-rank cross network over [bottom output, embeddings], top MLP.

MLPerf's shapes (`mlperf`): 13 numerics through 512-256-128, 26 Criteo 1TB tables of dim 128 (multi-hot bags in the
benchmark's data: `data.multi_hot_max` here), three low-rank cross layers of rank 512 over the 27 x 128 = 3,456
concatenated features, `x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l`, then 1024-1024-512-256-1.

The earlier MLPerf DLRM (dot interaction) stays `model.name=dlrm model.flavor=mlperf`. Distribution is applied from
outside (`disttrain.parallelize`); this file never imports torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disttrain.batch import KeyedBags
from disttrain.layers import EmbeddingBagCollection
from disttrain.models.dlrm import CRITEO_TERABYTE_ROWS, mlp
from disttrain.models.spec import CTR_SOURCES, ModelSpec, config_tables
from disttrain.tables import EmbeddingTableSpec


@dataclass(frozen=True)
class DCNv2Flavor:
    embedding_dim: int
    bottom: tuple[int, ...]  # hidden sizes after the dense input; the last equals embedding_dim
    cross_layers: int
    cross_rank: int
    top: tuple[int, ...]  # hidden sizes after the cross network; the last is 1
    table_rows: tuple[int, ...]


DCNV2_FLAVORS = {
    "debug": DCNv2Flavor(8, (16, 8), 2, 4, (16, 1), (50, 101, 7, 33)),
    # MLPerf Training v2.1+ DLRM-DCNv2 (torchrec_dlrm's defaults for the Criteo 1TB multi-hot benchmark).
    "mlperf": DCNv2Flavor(128, (512, 256, 128), 3, 512, (1024, 1024, 512, 256, 1), CRITEO_TERABYTE_ROWS),
}


class LowRankCrossNet(nn.Module):
    """`num_layers` cross layers `x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l` with V_l: d -> r, U_l: r -> d."""

    def __init__(self, in_features: int, num_layers: int, rank: int):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(in_features, rank, bias=False) for _ in range(num_layers))
        self.up = nn.ModuleList(nn.Linear(rank, in_features) for _ in range(num_layers))
        with torch.no_grad():
            for layer in [*self.down, *self.up]:
                nn.init.xavier_normal_(layer.weight)
            for layer in self.up:
                layer.bias.zero_()

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for down, up in zip(self.down, self.up):
            x = torch.addcmul(x, x0, up(down(x)))
        return x


class DLRMDCNv2(nn.Module):
    def __init__(self, *, num_dense: int, tables: list[EmbeddingTableSpec], bottom: tuple[int, ...],
                 cross_layers: int, cross_rank: int, top: tuple[int, ...], seed: int = 0,
                 embedding_device: str = "cpu"):
        super().__init__()
        dim = tables[0].dim
        if any(t.dim != dim for t in tables) or bottom[-1] != dim:
            raise ValueError("DLRM-DCNv2 needs one embedding dim shared by all tables and the bottom MLP's output")
        self.tables = list(tables)
        torch.manual_seed(seed)
        self.bottom = mlp(num_dense, bottom, last_activation=True)
        self.embeddings: nn.Module = EmbeddingBagCollection(tables, seed=seed, device=embedding_device)
        features = dim * (len(tables) + 1)
        self.cross = LowRankCrossNet(features, cross_layers, cross_rank)
        self.top = mlp(features, top, last_activation=False)

    def forward(self, dense: torch.Tensor, sparse: KeyedBags) -> torch.Tensor:
        """Logits [batch]."""
        x0 = torch.cat([self.bottom(dense), *(p.flatten(1) for p in self.embeddings(sparse))], dim=1)
        return self.top(self.cross(x0)).squeeze(1)


def build_dlrm_dcnv2(cfg, *, embedding_device: str = "cpu") -> DLRMDCNv2:
    base = DCNV2_FLAVORS[cfg.model.flavor]
    tables = config_tables(cfg, base)
    dim = tables[0].dim
    return DLRMDCNv2(num_dense=cfg.data.num_dense, tables=tables, bottom=base.bottom[:-1] + (dim,),
                     cross_layers=base.cross_layers, cross_rank=base.cross_rank, top=base.top, seed=cfg.train.seed,
                     embedding_device=embedding_device)


SPEC = ModelSpec(
    name="dlrm_dcnv2",
    flavors=DCNV2_FLAVORS,
    build=build_dlrm_dcnv2,
    data_sources=CTR_SOURCES,
    description="DLRM-DCNv2 (MLPerf Training's DLRM since v2.1): bottom MLP, low-rank cross network, top MLP",
)
