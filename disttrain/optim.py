"""Optimizers: sparse row-wise updates for embedding shards, torch optimizers for the dense part.

Embedding updates touch only the rows a step looked up, on the rank that holds them. Their maths follows
torch's sparse optimizers so that a sharded run equals an unsharded one:
`sgd` = torch.optim.SGD on sparse grads, `adagrad` = torch.optim.Adagrad (sparse), `adam` =
torch.optim.SparseAdam (lazy Adam), `rowwise_adagrad` = Adagrad with one accumulator per row (mean of g^2).
"""

from __future__ import annotations

import math

import torch

from disttrain.sharding.embedding import ShardedEmbeddingCollection

ADAGRAD_EPS = 1e-10
ADAM_EPS = 1e-8
ADAM_BETAS = (0.9, 0.999)


def _coalesce(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(unique.numel(), grads.shape[1], dtype=grads.dtype, device=grads.device)
    summed.index_add_(0, inverse, grads)
    return unique, summed


class SparseRowOptimizer:
    def __init__(self, collection: ShardedEmbeddingCollection, *, kind: str, lr: float):
        self.collection, self.kind, self.lr = collection, kind, lr
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0

    def _state(self, key: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        if key not in self.state:
            if self.kind == "adagrad":
                self.state[key] = {"sum": torch.zeros_like(weight)}
            elif self.kind == "rowwise_adagrad":
                self.state[key] = {"sum": torch.zeros(weight.shape[0], device=weight.device)}
            elif self.kind == "adam":
                self.state[key] = {"exp_avg": torch.zeros_like(weight), "exp_avg_sq": torch.zeros_like(weight)}
            else:
                self.state[key] = {}
        return self.state[key]

    def zero_grad(self) -> None:
        self.collection.pop_pending()  # drains in-flight gradient exchanges too

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for key, (rows, grads) in self.collection.pop_pending().items():
            weight = self.collection.weight(key)
            state = self._state(key, weight)
            # index_add_ without `alpha` (pre-scaled values): alpha takes a slow path on CPU (6x here).
            if self.kind == "sgd":
                weight.index_add_(0, rows, grads * -self.lr)
                continue
            rows, grads = _coalesce(rows, grads)
            if self.kind == "adagrad":
                state["sum"].index_add_(0, rows, grads * grads)
                std = state["sum"].index_select(0, rows).sqrt_().add_(ADAGRAD_EPS)
                weight.index_add_(0, rows, grads / std * -self.lr)
            elif self.kind == "rowwise_adagrad":
                state["sum"].index_add_(0, rows, (grads * grads).mean(dim=1))
                std = state["sum"].index_select(0, rows).sqrt_().add_(ADAGRAD_EPS)
                weight.index_add_(0, rows, grads / std.unsqueeze(1) * -self.lr)
            else:
                self._adam(weight, state, rows, grads)

    def _adam(self, weight, state, rows, grads) -> None:
        beta1, beta2 = ADAM_BETAS
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grads, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        step_size = self.lr * math.sqrt(1 - beta2**self.steps) / (1 - beta1**self.steps)
        weight.index_add_(0, rows, exp_avg / exp_avg_sq.sqrt_().add_(ADAM_EPS) * -step_size)


def dense_optimizer(params: list[torch.nn.Parameter], *, kind: str, lr: float) -> torch.optim.Optimizer:
    """The dense (data-parallel) part's optimizer; row-wise Adagrad has no dense form and maps to Adagrad."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if kind in ("adagrad", "rowwise_adagrad"):
        return torch.optim.Adagrad(params, lr=lr, eps=ADAGRAD_EPS)
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
