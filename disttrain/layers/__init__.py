"""Layers the plain models are built from: the unsharded embedding-bag collection, batch-statistics layers
(global across ranks once `disttrain.parallelize` hands them the collectives), TF's GRU/AUGRU, DLRM's dot
interaction, and the Linear whose backward has CPU-friendly GEMM shapes (`align_linears`, applied by
parallelize). Nothing here starts communication by itself."""

from disttrain.layers.aligned_linear import AlignedLinear, align_linears
from disttrain.layers.batch_stats import (
    BatchMoments,
    BatchNorm,
    Dice,
    FrozenBatchNorm,
    batch_stats_norm,
    set_collectives,
)
from disttrain.layers.interaction import dot_interaction, dot_interaction_cat
from disttrain.layers.shapes import padded_length, positions
from disttrain.layers.tf_gru import TFGRU
from disttrain.layers.unsharded_embedding_bags import EmbeddingBagCollection

__all__ = ["TFGRU", "AlignedLinear", "BatchMoments", "BatchNorm", "Dice", "EmbeddingBagCollection", "FrozenBatchNorm",
           "align_linears", "batch_stats_norm", "dot_interaction", "dot_interaction_cat", "padded_length", "positions", "set_collectives"]
