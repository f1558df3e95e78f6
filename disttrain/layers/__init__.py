"""Layers the plain models are built from: the unsharded embedding-bag collection, batch-statistics layers
(global across ranks once `disttrain.parallelize` hands them the collectives), TF's GRU/AUGRU, DLRM's dot
interaction. Nothing here starts communication by itself."""

from disttrain.layers.batch_stats import (
    BatchMoments,
    BatchNorm,
    Dice,
    FrozenBatchNorm,
    batch_stats_norm,
    set_collectives,
)
from disttrain.layers.interaction import dot_interaction
from disttrain.layers.shapes import padded_length, positions
from disttrain.layers.tf_gru import TFGRU
from disttrain.layers.unsharded_embedding_bags import EmbeddingBagCollection

__all__ = ["TFGRU", "BatchMoments", "BatchNorm", "Dice", "EmbeddingBagCollection", "FrozenBatchNorm",
           "batch_stats_norm", "dot_interaction", "padded_length", "positions", "set_collectives"]
