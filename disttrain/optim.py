"""Optimizers: one table (`OPTIMIZERS`) holds every fact about each one.

Per optimizer: its config name (`train.optimizer`), its sparse state per shard (names as checkpoints store them,
per element or per row, and the value it starts at), the sparse row update applied to the rows a step looked up,
and the dense (data-parallel) optimizer. The planner counts the state in each rank's memory from the same entry
(`state_words`), checkpoints save and reshard exactly the state it names.

Embedding updates touch only the rows a step looked up, on the rank that holds them. Their maths follows torch's
sparse optimizers so that a sharded run equals an unsharded one: `sgd` = torch.optim.SGD on sparse grads, `adagrad`
= torch.optim.Adagrad (sparse), `adam` = torch.optim.SparseAdam (lazy Adam), `rowwise_adagrad` = Adagrad with one
accumulator per row (mean of g^2), `adagraddecay` = DeepRec's AdagradDecayOptimizer: Adagrad whose accumulators
start at 0.1 and, every 100,000 global steps, are multiplied by 0.9 and floored at 0.1 (all rows at once, sparse
and dense alike).

bf16 tables (`model.embedding_dtype=bf16`): state stays fp32; each touched row is updated in fp32 and written back
with stochastic rounding (round-to-nearest would drop every update smaller than half a bf16 step, 2^-9 of the
weight, so small learning rates would stop training). The rounding noise is drawn per (seed, rank, step), so a
run and its resume agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from disttrain.errors import ConfigError
from disttrain.layers import row_kernels
from disttrain.layers.row_kernels import library, library_mode_checked

ADAGRAD_EPS = 1e-10
ADAM_EPS = 1e-8
ADAM_BETAS = (0.9, 0.999)
DECAY_INITIAL = 0.1  # AdagradDecay: the accumulators' start and floor
DECAY_STEPS = 100_000
DECAY_RATE = 0.9
UNRESOLVED = object()
ELEMENT, ROW = "element", "row"  # a sparse state tensor has one value per weight element, or one per row


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything disttrain knows about one optimizer."""

    name: str
    # Sparse state per shard: name (as checkpoints store it) -> ELEMENT or ROW.
    state: Mapping[str, str]
    # update(optimizer, weight, state, rows, grads): rows are distinct (coalesced), grads fp32 [rows, cols].
    sparse_update: Callable
    # dense(params, lr) -> torch.optim.Optimizer for the data-parallel parameters.
    dense: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]
    initial: float = 0.0  # what the sparse state starts at
    # every_step(optimizer): called once per step before the updates (AdagradDecay's periodic decay).
    every_step: Callable | None = None
    # False: the update is linear in the gradient, so fp32 rows need no coalescing (duplicates add up).
    coalesce: bool = True
    # compiled(optimizer, weight, state, rows, grads) -> bool: the same update by `disttrain.layers.row_kernels`
    # (fp32 tables; False: the tensors do not fit it, `sparse_update` runs instead). `compiled_exact`: bitwise
    # the torch ops' result, so `train.sparse_kernel=auto` uses it; else only `compiled` does.
    compiled: Callable | None = None
    compiled_exact: bool = False
    description: str = ""

    @property
    def state_words(self) -> tuple[int, int]:
        """fp32 words of sparse state (per weight element, per row): what the planner counts."""
        return (sum(kind == ELEMENT for kind in self.state.values()), sum(kind == ROW for kind in self.state.values()))


def optimizer_spec(name: str) -> OptimizerSpec:
    """The table entry for `train.optimizer`; a one-line error naming the choices otherwise."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer: got {name!r}, expected one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


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
    """Applies `OPTIMIZERS[kind]`'s sparse update to the row gradients a sharded collection hands over
    (`pop_pending()`: per fused weight, rows and their gradients)."""

    def __init__(self, collection, *, kind: str, lr: float, seed: int = 0, kernel: str = "auto"):
        self.collection, self.kind, self.lr, self.seed = collection, kind, lr, seed
        self.spec = optimizer_spec(kind)
        library_mode_checked(kernel)  # `train.sparse_kernel`; the kernels are loaded (built) at the first step,
        self.kernel = kernel  # so a model opened to serve never builds them
        self._lib = UNRESOLVED  # the row kernels (or None: torch's ops), chosen at the first step
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self.steps = 0
        self._generator = torch.Generator(device=collection.device)

    def state_for(self, key: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sparse state of one fused weight (allocated on first use; fp32 also for bf16 tables)."""
        if key not in self.state:
            rows = weight.shape[0]
            self.state[key] = {
                name: torch.full(weight.shape if kind == ELEMENT else (rows,), self.spec.initial,
                                 dtype=torch.float32, device=weight.device)
                for name, kind in self.spec.state.items()
            }
        state = self.state[key]
        for name, tensor in state.items():  # a dynamic table's weight grows: its state follows
            if tensor.shape[0] < weight.shape[0]:
                grown = torch.full((weight.shape[0], *tensor.shape[1:]), self.spec.initial, dtype=tensor.dtype,
                                   device=tensor.device)
                grown[: tensor.shape[0]] = tensor
                state[name] = grown
        return state

    def reset_rows(self, key: str, rows: torch.Tensor) -> None:
        """Rows (re)created in a dynamic table: their state starts over."""
        if key in self.state:
            state = self.state_for(key, self.collection.weight(key))
            for tensor in state.values():
                tensor.index_fill_(0, rows, self.spec.initial)

    def zero_grad(self) -> None:
        self.collection.pop_pending()  # drains in-flight gradient exchanges too

    def _kernels(self):
        """The row kernels where this optimizer has one it may use. Asking for the library also turns this
        process's compiled dot interaction on (or, with `torch`, off) from the next forward on."""
        if self.collection.device.type != "cpu":
            return None
        lib = library(self.kernel)
        wanted = self.spec.compiled is not None and (self.kernel == "compiled" or self.spec.compiled_exact)
        return lib if wanted else None

    @torch.no_grad()
    def step(self) -> None:
        if self._lib is UNRESOLVED:
            self._lib = self._kernels()
        self.steps += 1
        if self.spec.every_step is not None:
            self.spec.every_step(self)
        for key, rows in self.collection.pop_fresh().items():
            self.reset_rows(key, rows)
        for key, (rows, grads) in self.collection.pop_pending().items():
            weight = self.collection.weight(key)
            state = self.state_for(key, weight)
            grads = grads.float()
            if self.spec.coalesce or weight.dtype != torch.float32:  # bf16 rows are rounded once per row
                rows, grads = _coalesce(rows, grads)
            if self._lib is None or not self.spec.compiled(self, weight, state, rows, grads):
                self.spec.sparse_update(self, weight, state, rows, grads)
        self.collection.end_step()

    def add(self, weight: torch.Tensor, rows: torch.Tensor, delta: torch.Tensor) -> None:
        """weight[rows] += delta; bf16 rows (distinct) are updated in fp32 and rounded stochastically.
        index_add_ without `alpha` (pre-scaled values): alpha takes a slow path on CPU (6x here)."""
        if weight.dtype == torch.float32:
            weight.index_add_(0, rows, delta)
            return
        self._generator.manual_seed((self.seed * 1_000_003 + self.collection.rank) * 1_000_033 + self.steps)
        updated = weight.index_select(0, rows).float().add_(delta)
        weight.index_copy_(0, rows, stochastic_round_bf16(updated, self._generator))


# ----- sparse row updates ----------------------------------------------------------------------------------------
def _sgd(opt: SparseRowOptimizer, weight, state, rows, grads) -> None:
    opt.add(weight, rows, grads.mul_(-opt.lr))  # the row gradients are this step's own: scaled in place


def _adagrad(opt: SparseRowOptimizer, weight, state, rows, grads) -> None:
    state["sum"].index_add_(0, rows, grads * grads)
    std = state["sum"].index_select(0, rows).sqrt_().add_(ADAGRAD_EPS)
    opt.add(weight, rows, grads / std * -opt.lr)


def _rowwise_adagrad(opt: SparseRowOptimizer, weight, state, rows, grads) -> None:
    state["sum"].index_add_(0, rows, (grads * grads).mean(dim=1))
    std = state["sum"].index_select(0, rows).sqrt_().add_(ADAGRAD_EPS)
    opt.add(weight, rows, grads / std.unsqueeze(1) * -opt.lr)


def _adam(opt: SparseRowOptimizer, weight, state, rows, grads) -> None:
    beta1, beta2 = ADAM_BETAS
    exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grads, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
    state["exp_avg"].index_copy_(0, rows, exp_avg)
    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
    step_size = opt.lr * math.sqrt(1 - beta2**opt.steps) / (1 - beta1**opt.steps)
    opt.add(weight, rows, exp_avg / exp_avg_sq.sqrt_().add_(ADAM_EPS) * -step_size)


def _compiled_sgd(opt: SparseRowOptimizer, weight, state, rows, grads) -> bool:
    return row_kernels.sgd(opt._lib, weight, rows, grads, opt.lr)


def _compiled_adagrad(opt: SparseRowOptimizer, weight, state, rows, grads) -> bool:
    return row_kernels.adagrad(opt._lib, weight, state["sum"], rows, grads, opt.lr, ADAGRAD_EPS)


def _decay_all_rows(opt: SparseRowOptimizer) -> None:
    if opt.steps % DECAY_STEPS == 0:
        for state in opt.state.values():
            state["sum"].mul_(DECAY_RATE).clamp_(min=DECAY_INITIAL)


# ----- dense (data-parallel) optimizers ------------------------------------------------------------------------
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


def _fused(params) -> dict:
    """torch's fused kernels (one pass over all parameters) where they exist: DIEN has ~40 small parameter
    tensors, and the per-tensor loop cost 4 ms a step (3x the fused step)."""
    return {"fused": True} if params and all(p.device.type in ("cpu", "cuda") for p in params) else {}


def _dense_sgd(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, **_fused(params))


def _dense_adagrad(params, lr: float) -> torch.optim.Optimizer:
    on_cpu = _fused(params) and all(p.device.type == "cpu" for p in params)  # torch's fused Adagrad is CPU-only
    return torch.optim.Adagrad(params, lr=lr, eps=ADAGRAD_EPS, **(_fused(params) if on_cpu else {}))


def _dense_adam(params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, **_fused(params))


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("sgd", {}, _sgd, _dense_sgd, coalesce=False, compiled=_compiled_sgd, compiled_exact=True,
                      description="plain SGD"),
        OptimizerSpec("adagrad", {"sum": ELEMENT}, _adagrad, _dense_adagrad, compiled=_compiled_adagrad,
                      description="Adagrad"),
        OptimizerSpec("rowwise_adagrad", {"sum": ROW}, _rowwise_adagrad, _dense_adagrad,
                      description="Adagrad with one accumulator per embedding row (dense part: Adagrad)"),
        OptimizerSpec("adam", {"exp_avg": ELEMENT, "exp_avg_sq": ELEMENT}, _adam, _dense_adam,
                      description="lazy Adam on rows (torch's SparseAdam), Adam on the dense part"),
        OptimizerSpec("adagraddecay", {"sum": ELEMENT}, _adagrad, lambda params, lr: AdagradDecay(params, lr=lr),
                      initial=DECAY_INITIAL, every_step=_decay_all_rows, compiled=_compiled_adagrad,
                      description="DeepRec's AdagradDecay: accumulators from 0.1, x0.9 every 100k steps"),
    )
}


def dense_optimizer(params: list[torch.nn.Parameter], *, kind: str, lr: float) -> torch.optim.Optimizer:
    """The dense (data-parallel) part's optimizer for `train.optimizer=kind`."""
    return optimizer_spec(kind).dense(params, lr)
