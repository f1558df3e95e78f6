"""nn.Linear with a backward whose GEMMs have shapes the CPU's kernels like; same parameters, same maths.

Two shapes of an MLP's backward run far below the GEMM rate on CPU (measured on a 2-core AMD EPYC, fp32, one
thread, batch 1024; the forward is unaffected):
- an input width that is not a multiple of 16 (DLRM's top layer reads 367 = 16 + 351 pairs): the input
  gradient [B, 367] and the weight gradient [N, 367] are written with a ragged last block, 5.5 and 4.8 ms
  against 4.1 and 4.1 ms for 368. Here the input and the weight are padded with zero columns once per step
  (two small copies) and the gradients are the first K columns of the padded products;
- a thin input (the bottom MLP's 13 dense features): grad_out^T @ x ([512, 1024] @ [1024, 13]) takes 0.69 ms,
  (x^T @ grad_out)^T 0.23 ms.
bf16 GEMMs show neither penalty (367 and 368 wide take the same time), so under bf16 autocast, in inference, on
GPUs (not measured) and for layers with neither shape, `forward` is plain `F.linear`: the custom backward costs
~0.1 ms of Python per layer, so it is only used where it pays. Measured in one process (DLRM kaggle dense part,
batch 1024, one thread, 300 interleaved steps, `benchmarks/aligned_linear.py`): fp32 forward + backward
40.8 -> 39.6 ms median (1.03x); bf16 unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ALIGN = 16  # output columns per block of the vector kernels (16 fp32 lanes of AVX-512)
THIN = 32  # input widths below this compute the weight gradient transposed


def _padded_width(width: int) -> int:
    return width if width % ALIGN == 0 or width < 4 * ALIGN else width + ALIGN - width % ALIGN


def _pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    out = t.new_zeros(t.shape[0], width)
    out[:, : t.shape[1]] = t
    return out


class _AlignedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2, width = x, x.shape[1]
        padded = _padded_width(width)
        if padded != width:
            x2, weight = _pad_columns(x2, padded), _pad_columns(weight, padded)
        out = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        ctx.save_for_backward(x2, weight)
        ctx.width, ctx.has_bias = width, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x2, weight = ctx.saved_tensors
        width, grad = ctx.width, grad_out  # fp32 throughout: the Function only runs outside autocast
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight)[:, :width]
        if ctx.needs_input_grad[1]:
            grad_w = (x2.t() @ grad).t() if width < THIN else (grad.t() @ x2)[:, :width]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


class AlignedLinear(nn.Linear):
    """A drop-in nn.Linear (same `weight` and `bias`, same state_dict) built from one with `from_linear`."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> AlignedLinear:
        aligned = cls.__new__(cls)
        nn.Module.__init__(aligned)
        aligned.in_features, aligned.out_features = linear.in_features, linear.out_features
        aligned.weight, aligned.bias = linear.weight, linear.bias
        aligned.train(linear.training)
        width = linear.in_features
        aligned.reshaped = linear.weight.dtype == torch.float32 and (width < THIN or _padded_width(width) != width)
        return aligned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.reshaped and x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu")):
            if x.dim() == 2:  # no view of the output: an in-place ReLU on a view would copy the gradient
                return _AlignedLinear.apply(x, self.weight, self.bias)
            out = _AlignedLinear.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias)  # 2-D inside
            return out.view(*x.shape[:-1], out.shape[-1])
        return F.linear(x, self.weight, self.bias)


def align_linears(model: nn.Module) -> int:
    """Swap every plain nn.Linear of `model` (not subclasses) for an AlignedLinear sharing its parameters;
    returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, AlignedLinear.from_linear(child))
                swapped += 1
    return swapped
