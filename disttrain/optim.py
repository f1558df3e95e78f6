"""Optimizers: sparse row-wise updates for embedding shards, torch optimizers for the dense part.

Embedding updates touch only the rows a step looked up, on the rank that holds them. Their maths follows
torch's sparse optimizers so that a sharded run equals an unsharded one:
`sgd` = torch.optim.SGD on sparse grads, `adagrad` = torch.optim.Adagrad (sparse), `adam` =
torch.optim.SparseAdam (lazy Adam), `rowwise_adagrad` = Adagrad with one accumulator per row (mean of g^2),
`adagraddecay` = DeepRec's AdagradDecayOptimizer: Adagrad whose accumulators start at 0.1 and, every
100,000 global steps, are multiplied by 0.9 and floored at 0.1 (all rows at once, sparse and dense alike).

bf16 tables (`model.embedding_dtype=bf16`): state stays fp32; each touched row is updated in fp32 and written
back with stochastic rounding (round-to-nearest would drop every update smaller than half a bf16 step, 2^-9
of the weight, so small learning rates would stop training). The rounding noise is drawn per (seed, rank,
step), so a run and its resume agree.
"""

from __future__ import annotations

import math

import torch

from disttrain.sharding.embedding import ShardedEmbeddingCollection

ADAGRAD_EPS = 1e-10
ADAM_EPS = 1e-8
ADAM_BETAS = (0.9, 0.999)
DECAY_INITIAL = 0.1  # AdagradDecay: the accumulators' start and floor
DECAY_STEPS = 100_000
DECAY_RATE = 0.9


def stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """fp32 -> bf16, rounding up (in magnitude) with probability equal to the dropped fraction: unbiased."""
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, generator=generator, device=x.device)
    return ((x.contiguous().view(torch.int32) + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _coalesce(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(unique.numel(), grads.shape[1], dtype=grads.dtype, device=grads.device)
    summed.index_add_(0, inverse, grads)
    return unique, summed


class SparseRowOptimizer:
    def __init__(self, collection: ShardedEmbeddingCollection, *, kind: str, lr: float, seed: int = 0):
        self.collection, self.kind, self.lr, self.seed = collection, kind, lr, seed
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0
        self._generator = torch.Generator(device=collection.device)

    def _state(self, key: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        if key not in self.state:
            fp32 = {"dtype": torch.float32}  # also for bf16 tables
            if self.kind == "adagrad":
                self.state[key] = {"sum": torch.zeros_like(weight, **fp32)}
            elif self.kind == "adagraddecay":
                self.state[key] = {"sum": torch.full_like(weight, DECAY_INITIAL, **fp32)}
            elif self.kind == "rowwise_adagrad":
                self.state[key] = {"sum": torch.zeros(weight.shape[0], device=weight.device)}
            elif self.kind == "adam":
                self.state[key] = {"exp_avg": torch.zeros_like(weight, **fp32),
                                   "exp_avg_sq": torch.zeros_like(weight, **fp32)}
            else:
                self.state[key] = {}
        return self.state[key]

    def zero_grad(self) -> None:
        self.collection.pop_pending()  # drains in-flight gradient exchanges too

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        if self.kind == "adagraddecay" and self.steps % DECAY_STEPS == 0:
            for state in self.state.values():
                state["sum"].mul_(DECAY_RATE).clamp_(min=DECAY_INITIAL)
        for key, (rows, grads) in self.collection.pop_pending().items():
            weight = self.collection.weight(key)
            state = self._state(key, weight)
            grads = grads.float()
            # index_add_ without `alpha` (pre-scaled values): alpha takes a slow path on CPU (6x here).
            if self.kind == "sgd" and weight.dtype == torch.float32:
                weight.index_add_(0, rows, grads * -self.lr)
                continue
            rows, grads = _coalesce(rows, grads)
            if self.kind == "sgd":
                self._add(weight, rows, grads * -self.lr)
            elif self.kind in ("adagrad", "adagraddecay"):
                state["sum"].index_add_(0, rows, grads * grads)
                std = state["sum"].index_select(0, rows).sqrt_().add_(ADAGRAD_EPS)
                self._add(weight, rows, grads / std * -self.lr)
            elif self.kind == "rowwise_adagrad":
                state["sum"].index_add_(0, rows, (grads * grads).mean(dim=1))
                std = state["sum"].index_select(0, rows).sqrt_().add_(ADAGRAD_EPS)
                self._add(weight, rows, grads / std.unsqueeze(1) * -self.lr)
            else:
                self._adam(weight, state, rows, grads)

    def _add(self, weight: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> None:
        """weight[rows] += delta (rows distinct); bf16 rows are updated in fp32 and rounded stochastically."""
        if weight.dtype == torch.float32:
            weight.index_add_(0, rows, delta)
            return
        self._generator.manual_seed((self.seed * 1_000_003 + self.collection.rank) * 1_000_033 + self.steps)
        updated = weight.index_select(0, rows).float().add_(delta)
        weight.index_copy_(0, rows, stochastic_round_bf16(updated, self._generator))

    def _adam(self, weight, state, rows, grads) -> None:
        beta1, beta2 = ADAM_BETAS
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grads, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        step_size = self.lr * math.sqrt(1 - beta2**self.steps) / (1 - beta1**self.steps)
        self._add(weight, rows, exp_avg / exp_avg_sq.sqrt_().add_(ADAM_EPS) * -step_size)


class AdagradDecay(torch.optim.Optimizer):
    """The dense form of `adagraddecay` (DeepRec's AdagradDecayOptimizer)."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(())
                    state["sum"] = torch.full_like(p, DECAY_INITIAL)
                state["step"] += 1
                if int(state["step"]) % DECAY_STEPS == 0:
                    state["sum"].mul_(DECAY_RATE).clamp_(min=DECAY_INITIAL)
                state["sum"].addcmul_(p.grad, p.grad)
                p.addcdiv_(p.grad, state["sum"].sqrt().add_(ADAGRAD_EPS), value=-group["lr"])


def dense_optimizer(params: list[torch.nn.Parameter], *, kind: str, lr: float) -> torch.optim.Optimizer:
    """The dense (data-parallel) part's optimizer; row-wise Adagrad has no dense form and maps to Adagrad.

    torch's fused kernels (one pass over all parameters) where they exist: DIEN has ~40 small parameter
    tensors, and the per-tensor loop cost 4 ms a step (3x the fused step)."""
    if kind == "adagraddecay":
        return AdagradDecay(params, lr=lr)
    fused = {"fused": True} if params and all(p.device.type in ("cpu", "cuda") for p in params) else {}
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, **fused)
    if kind in ("adagrad", "rowwise_adagrad"):  # torch's fused Adagrad is CPU-only
        on_cpu = fused and all(p.device.type == "cpu" for p in params)
        return torch.optim.Adagrad(params, lr=lr, eps=ADAGRAD_EPS, **(fused if on_cpu else {}))
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, **fused)
