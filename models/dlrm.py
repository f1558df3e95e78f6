"""DLRM (Naumov et al. 2019) as a plain module: bottom MLP, embedding bags, dot/cat interaction, top MLP.

Distribution is applied from outside (`disttrain.parallelize`), which swaps `model.embeddings` for a sharded
collection and synchronises the dense parameters' gradients. This file never imports torch.distributed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from disttrain.batch import KeyedBags
from disttrain.errors import DataError
from disttrain.layers import EmbeddingBagCollection, dot_interaction_cat
from disttrain.models.spec import CTR_SOURCES, ModelSpec, config_tables
from disttrain.tables import EmbeddingTableSpec

CRITEO_KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
CRITEO_TERABYTE_ROWS = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10, 2208, 11938,
    155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)


@dataclass(frozen=True)
class DLRMFlavor:
    embedding_dim: int
    bottom: tuple[int, ...]  # hidden sizes after the dense input; the last equals embedding_dim
    top: tuple[int, ...]  # hidden sizes after the interaction; the last is 1
    table_rows: tuple[int, ...]


DLRM_FLAVORS = {
    "debug": DLRMFlavor(8, (16, 8), (16, 1), (50, 101, 7, 33)),
    "kaggle": DLRMFlavor(16, (512, 256, 64, 16), (512, 256, 1), CRITEO_KAGGLE_ROWS),
    "mlperf": DLRMFlavor(128, (512, 256, 128), (1024, 1024, 512, 256, 1), CRITEO_TERABYTE_ROWS),
}


def mlp(in_features: int, sizes: tuple[int, ...], *, last_activation: bool) -> nn.Sequential:
    """Linear+ReLU stack initialised as in the DLRM reference (normal, fan-based std)."""
    layers: list[nn.Module] = []
    for i, out_features in enumerate(sizes):
        linear = nn.Linear(in_features, out_features)
        with torch.no_grad():
            linear.weight.normal_(0.0, (2.0 / (in_features + out_features)) ** 0.5)
            linear.bias.normal_(0.0, (1.0 / out_features) ** 0.5)
        layers.append(linear)
        if i < len(sizes) - 1 or last_activation:
            layers.append(nn.ReLU(inplace=True))
        in_features = out_features
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    def __init__(
        self,
        *,
        num_dense: int,
        tables: list[EmbeddingTableSpec],
        bottom: tuple[int, ...],
        top: tuple[int, ...],
        interaction: str = "dot",
        seed: int = 0,
        embedding_device: str = "cpu",
    ):
        super().__init__()
        dim = tables[0].dim
        if any(t.dim != dim for t in tables) or bottom[-1] != dim:
            raise ValueError("DLRM needs one embedding dim shared by all tables and the bottom MLP's output")
        self.tables = list(tables)
        self.interaction = interaction
        torch.manual_seed(seed)
        self.bottom = mlp(num_dense, bottom, last_activation=True)
        self.embeddings: nn.Module = EmbeddingBagCollection(tables, seed=seed, device=embedding_device)
        num_vectors = len(tables) + 1
        if interaction == "dot":
            rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=-1)
            # Pairs below the diagonal as flat positions: one index_select (2x faster than Z[:, rows, cols]).
            self.register_buffer("tril_flat", rows * num_vectors + cols, persistent=False)
            interaction_dim = dim + num_vectors * (num_vectors - 1) // 2
        else:
            interaction_dim = dim * num_vectors
        self.top = mlp(interaction_dim, top, last_activation=False)

    def interact(self, dense_BD: torch.Tensor, pooled: list[torch.Tensor]) -> torch.Tensor:
        """`pooled`: per table [B, 1, D]."""
        if self.interaction == "cat":
            return torch.cat([dense_BD.unsqueeze(1), *pooled], dim=1).flatten(1)
        return dot_interaction_cat(dense_BD, pooled, self.tril_flat)

    def forward(self, dense: torch.Tensor, sparse: KeyedBags) -> torch.Tensor:
        """Logits [batch]; `torch.sigmoid` of them is the click probability."""
        dense_BD = self.bottom(dense)
        return self.top(self.interact(dense_BD, self.embeddings(sparse))).squeeze(1)


def build_dlrm(cfg, *, embedding_device: str = "cpu") -> DLRM:
    """Build from a `disttrain.config.Config`; `embedding_device="meta"` when the tables will be sharded."""
    base = DLRM_FLAVORS[cfg.model.flavor]
    tables = config_tables(cfg, base)
    dim = tables[0].dim
    bottom = base.bottom[:-1] + (dim,)
    return DLRM(
        num_dense=cfg.data.num_dense,
        tables=tables,
        bottom=bottom,
        top=base.top,
        interaction=cfg.model.interaction,
        seed=cfg.train.seed,
        embedding_device=embedding_device,
    )


# Facebook's dlrm_s_pytorch.py --save-model: emb_l.N.weight tables, bot_l/top_l Sequentials of Linear and ReLU.
_REFERENCE_KEY = re.compile(r"^(?:module\.)?(emb_l|bot_l|top_l)\.(\d+)\.(weight|bias)$")


def from_reference(state_dict: dict) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """(table weights in order, {this model's dense parameter name: tensor}) of a reference DLRM state_dict."""
    tables: dict[int, torch.Tensor] = {}
    dense: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        match = _REFERENCE_KEY.match(key)
        if not match:
            continue
        group, index, kind = match.group(1), int(match.group(2)), match.group(3)
        if group == "emb_l":
            tables[index] = tensor
        else:
            dense[f"{'bottom' if group == 'bot_l' else 'top'}.{index}.{kind}"] = tensor
    if not tables:
        raise DataError("no emb_l.N.weight tensors in state_dict; expected the reference DLRM layout")
    return [tables[i] for i in range(len(tables))], dense


SPEC = ModelSpec(
    name="dlrm",
    flavors=DLRM_FLAVORS,
    build=build_dlrm,
    data_sources=CTR_SOURCES,
    description="Facebook's DLRM: bottom MLP, pooled embeddings, dot/cat interaction, top MLP",
    reference_import=from_reference,
)
