"""The one place where distribution is applied to a plain model.

Order: (1) plan the tables, (2) swap the model's `embeddings` for the sharded collection, (3) make batch
statistics (BatchNorm, Dice) global-batch statistics, (4) give the MLPs' Linear layers a backward with
aligned GEMM shapes (same parameters), (5) make every rank's dense parameters and buffers rank 0's (a user's model need not seed itself), (6) put
the dense parameters' gradients in one all-reduced buffer, (7) build the two optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from disttrain.collectives import Collectives
from disttrain.data_parallel import DataParallelGrads
from disttrain.layers import align_linears, set_collectives
from disttrain.optim import SparseRowOptimizer, dense_optimizer
from disttrain.replicas import broadcast_dense
from disttrain.sharding.plan import ShardingPlan
from disttrain.sharding.sharded_embedding_bags import ShardedEmbeddingBagCollection


@dataclass
class Parallelized:
    model: torch.nn.Module
    embeddings: ShardedEmbeddingBagCollection
    grads: DataParallelGrads
    dense_optimizer: torch.optim.Optimizer
    sparse_optimizer: SparseRowOptimizer
    plan: ShardingPlan

    def zero_grad(self) -> None:
        self.grads.zero_grad()
        self.sparse_optimizer.zero_grad()

    def step(self) -> None:
        # Sparse updates first: the last dense-gradient buckets are still being summed meanwhile.
        self.sparse_optimizer.step()
        self.grads.synchronize()
        self.dense_optimizer.step()


def parallelize(
    model: torch.nn.Module,
    *,
    plan: ShardingPlan,
    comm: Collectives,
    optimizer: str,
    lr: float,
    seed: int,
    device: torch.device | str = "cpu",
    sparse_kernel: str = "auto",
) -> Parallelized:
    """`model` must expose `tables` (its EmbeddingTableSpec list) and an `embeddings` submodule. Everything
    (shards, dense parameters, the gradient buffer) lives on `device`."""
    embeddings = ShardedEmbeddingBagCollection(model.tables, plan, comm, seed=seed, device=device)
    model.embeddings = embeddings
    set_collectives(model, comm)
    align_linears(model)
    model.to(device)
    broadcast_dense(model, comm)
    dense_params = [p for name, p in model.named_parameters() if not name.startswith("embeddings.")]
    grads = DataParallelGrads(dense_params, comm)
    return Parallelized(
        model=model,
        embeddings=embeddings,
        grads=grads,
        dense_optimizer=dense_optimizer(dense_params, kind=optimizer, lr=lr),
        sparse_optimizer=SparseRowOptimizer(embeddings, kind=optimizer, lr=lr, seed=seed, kernel=sparse_kernel),
        plan=plan,
    )
