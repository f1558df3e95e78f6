"""Batch-statistics layers the seed models share and torch lacks in their exact form.

- `BatchMoments`: mean and variance over the batch. A plain model gets the local batch's; `parallelize` hands
  every `BatchMoments` the collectives, and then it is the *global* batch's (one all-reduce forward, one
  backward), so a layer that always normalises with batch statistics (DIEN's Dice, DeepRec's DeepFM
  BatchNorm) gives on N ranks exactly what one process gives on the whole batch.
- `BatchNorm` (batch statistics always, TF's epsilon), `FrozenBatchNorm` and `Dice` (Zhou et al., DIN).
"""

from __future__ import annotations

import torch
from torch import nn

from disttrain.phases import phase


def at_least_fp32(x: torch.Tensor | None) -> torch.Tensor | None:
    """bf16/fp16 (from autocast) up to fp32; fp32 and fp64 as they are."""
    return x.float() if x is not None and x.dtype in (torch.bfloat16, torch.float16) else x


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor, comm) -> torch.Tensor:
        ctx.comm = comm
        out = tensor.clone()
        with phase("all_reduce"):
            comm.all_reduce_sum(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank's loss depends on the sum, and the losses add up: the gradient of the sum is the sum.
        grad = grad.clone()
        with phase("all_reduce"):
            ctx.comm.all_reduce_sum(grad)
        return grad, None


class BatchMoments(nn.Module):
    """Mean and (biased) variance of `x [..., C]` over every axis but the last, across ranks once `comm` is
    set (`disttrain.parallelize` sets it; every rank must hold the same number of rows)."""

    def __init__(self):
        super().__init__()
        self.comm = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = at_least_fp32(x.reshape(-1, x.shape[-1]))  # statistics in fp32, also under bf16 autocast
        rows = flat.shape[0]
        sums = torch.cat([flat.sum(0), (flat * flat).sum(0)])
        if self.comm is not None and self.comm.world_size > 1:
            sums = _AllReduceSum.apply(sums, self.comm)
            rows *= self.comm.world_size
        total, squares = sums.chunk(2)
        mean = total / rows
        return mean, (squares / rows - mean * mean).clamp_min(0.0)


class _GlobalBatchNorm(torch.autograd.Function):
    """BatchNorm over the global batch: statistics from one all-reduce forward, the input gradient's two
    per-channel sums from one all-reduce backward; every pass over the activations is a fused native kernel
    (`batch_norm` in inference form with the global statistics, and its backward)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, comm):
        rows = x.shape[0]
        var, mean = torch.var_mean(x, 0, correction=0)
        sums = torch.cat([mean * rows, (var + mean * mean) * rows])
        with phase("all_reduce"):
            comm.all_reduce_sum(sums)
        total = rows * comm.world_size
        mean, squares = sums.chunk(2)
        mean = mean / total
        var = (squares / total - mean * mean).clamp_min(0.0)
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps, ctx.comm, ctx.total = eps, comm, total
        return torch.nn.functional.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, var = ctx.saved_tensors
        invstd = torch.rsqrt(var + ctx.eps)
        # With the statistics held fixed: dx0 = grad * w * invstd, and the local sums of grad * xhat and grad.
        dx, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous(), x, weight, mean, var, None, None, False, ctx.eps, [True, True, True])
        sums = torch.cat([grad_bias, grad_weight])
        with phase("all_reduce"):
            ctx.comm.all_reduce_sum(sums)
        sum_dy, sum_dy_xhat = sums.chunk(2)
        # The statistics' share: dx = dx0 - w * invstd * (sum_dy + xhat * sum_dy_xhat) / N
        a = weight * invstd * invstd * sum_dy_xhat / ctx.total
        c = weight * invstd * sum_dy / ctx.total - mean * a
        dx = torch.addcmul(dx, x, a, value=-1.0).sub_(c)
        return dx, grad_weight, grad_bias, None, None


def batch_stats_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise with the batch's own statistics, computed in float64 (exact to fp32 rounding), then one
    per-channel y = x * a + b in x's dtype. Plain ops, so an ONNX export computes the same."""
    x64 = x.double()
    mean = x64.mean(dim=0, keepdim=True)
    centered = x64 - mean
    scale = torch.rsqrt((centered * centered).mean(dim=0, keepdim=True) + eps) * weight.double()
    return x * scale.to(x.dtype) + (bias.double() - mean * scale).to(x.dtype)


class BatchNorm(nn.Module):
    """BatchNorm that always uses the batch's statistics (as DeepRec's DeepFM, whose BN runs in training mode
    at evaluation too); TF's default epsilon 1e-3. Global-batch statistics once `parallelize` sets `comm`."""

    def __init__(self, features: int, eps: float = 1e-3):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.eps = eps
        self.comm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = at_least_fp32(x)  # normalisation in fp32, also under bf16 autocast
        if self.comm is None or self.comm.world_size == 1:
            if not self.training or x.shape[0] == 1:
                # Serving (and one-sample batches, which torch's kernel refuses): exact statistics. torch's fused
                # training kernel is up to ~20 ulps off at DeepFM's activations; its backward is kept for training.
                return batch_stats_norm(x, self.weight, self.bias, self.eps)
            return torch.nn.functional.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        return _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps, self.comm)


class FrozenBatchNorm(nn.Module):
    """What TF's `batch_normalization(training=False)` computes when nothing ever updates its moving
    statistics (DIEN's final and auxiliary networks): `x / sqrt(1 + eps) * gamma + beta`."""

    def __init__(self, features: int, eps: float = 1e-3):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        self.scale = (1.0 + eps) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.weight * self.scale) + self.bias


class Dice(nn.Module):
    """DIN's data-adaptive activation: `p = sigmoid((x - E[x]) / (std + eps))`, `alpha (1 - p) x + p x`, with the
    batch's statistics always (as DIEN's `dice`, also at inference)."""

    def __init__(self, features: int, eps: float = 1e-9):
        super().__init__()
        self.moments = BatchMoments()
        self.alpha = nn.Parameter(torch.zeros(features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.moments(x)
        p = torch.sigmoid((x - mean) / (torch.sqrt(var + self.eps) + self.eps))
        return x * (p + self.alpha * (1.0 - p))


def set_collectives(model: nn.Module, comm) -> None:
    """Make every `BatchMoments` and `BatchNorm` in `model` use global-batch statistics over `comm`."""
    for module in model.modules():
        if isinstance(module, (BatchMoments, BatchNorm)):
            module.comm = comm
