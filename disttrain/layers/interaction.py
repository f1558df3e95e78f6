"""DLRM's dot interaction with a hand-written backward.

out[b] = the strictly-lower-triangular entries of T[b] @ T[b]^T (pairs of vectors).
Autograd of bmm(T, T^T) then a gather runs two batched GEMMs, a zero-fill and a scatter-add. Here
dL/dT = dZ @ T + dZ^T @ T is one bmm plus one baddbmm reading dZ transposed (no transposed copy), and dZ
lives in a buffer that is zeroed once: only the pair positions are ever written, always the same ones.
"""

from __future__ import annotations

import ctypes

import torch

from disttrain.layers import row_kernels

_GRAD_BUFFERS: dict[tuple, torch.Tensor] = {}


def _zeroed_buffer(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (shape, dtype, device)
    if key not in _GRAD_BUFFERS:
        _GRAD_BUFFERS.clear()  # one live shape at a time (the batch size rarely changes)
        _GRAD_BUFFERS[key] = torch.zeros(shape, dtype=dtype, device=device)
    return _GRAD_BUFFERS[key]


_LOWER: dict[tuple[int, int, int], bool] = {}


def _lower_rows(num_vectors: int, pairs_flat: torch.Tensor) -> bool | None:
    """True when `pairs_flat` is the whole strictly-lower triangle in row order (DLRM's), so rows of it can be
    copied as slices; None otherwise (any other pair list goes through index_select / index_copy_). Cached per
    pair tensor (a model's buffer)."""
    key = (num_vectors, pairs_flat.data_ptr(), pairs_flat.numel())
    if key not in _LOWER:
        rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=-1, device=pairs_flat.device)
        _LOWER[key] = torch.equal(pairs_flat, rows * num_vectors + cols)
    return True if _LOWER[key] else None


class _DotInteraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vectors_BVD: torch.Tensor, pairs_flat: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(vectors_BVD.device.type):  # bf16 autocast: forward and backward in bf16
            vectors_BVD = vectors_BVD.to(torch.get_autocast_dtype(vectors_BVD.device.type))
        dots_BVV = torch.bmm(vectors_BVD, vectors_BVD.transpose(1, 2))
        ctx.save_for_backward(vectors_BVD, pairs_flat)
        # index_copy_ across columns has no vector path on CPU (0.56 ms here for DLRM's 1024 x 351 pairs, fp32 or
        # bf16); copies of the triangle's row slices do (0.26 ms): the backward uses them for both. Forward, the
        # gather is index_select in fp32 (0.13 ms against 0.22 for the slices) and the slices in bf16 (0.21
        # against 0.73).
        ctx.rows = _lower_rows(vectors_BVD.shape[1], pairs_flat)
        if ctx.rows is not None and dots_BVV.dtype != torch.float32:
            return torch.cat([dots_BVV[:, i, :i] for i in range(1, dots_BVV.shape[1])], dim=1)
        return dots_BVV.flatten(1).index_select(1, pairs_flat)

    @staticmethod
    def backward(ctx, grad_BP: torch.Tensor):
        vectors_BVD, pairs_flat = ctx.saved_tensors
        grad_BP = grad_BP.to(vectors_BVD.dtype)
        batch, num_vectors, _ = vectors_BVD.shape
        grad_dots = _zeroed_buffer((batch, num_vectors * num_vectors), grad_BP.dtype, grad_BP.device)
        grad_dots_BVV = grad_dots.view(batch, num_vectors, num_vectors)
        if ctx.rows is not None:  # one slice copy per row of the triangle
            at = 0
            for i in range(1, num_vectors):
                grad_dots_BVV[:, i, :i].copy_(grad_BP[:, at : at + i])
                at += i
        else:
            grad_dots.index_copy_(1, pairs_flat, grad_BP)  # off-pair entries stay zero across calls
        grad_vectors = torch.bmm(grad_dots_BVV, vectors_BVD)
        return torch.baddbmm(grad_vectors, grad_dots_BVV.transpose(1, 2), vectors_BVD), None  # autograd casts back


def dot_interaction(vectors_BVD: torch.Tensor, pairs_flat: torch.Tensor) -> torch.Tensor:
    """[B, V, D] -> [B, P]: dot products of the pairs `pairs_flat` (flat indices i * V + j, i > j)."""
    return _DotInteraction.apply(vectors_BVD, pairs_flat)


class _CompiledDotInteraction(torch.autograd.Function):
    """[dense | pairs of (dense, *pooled)] in one pass of `interaction_kernels.c`, reading each vector where it lies;
    fp32 (bitwise the torch path's at width 16 here) or bf16 (sums in fp32, each result rounded once)."""

    @staticmethod
    def forward(ctx, lib, dense_BD: torch.Tensor, *pooled: torch.Tensor) -> torch.Tensor:
        vectors = (dense_BD, *pooled)
        batch, dim, count = dense_BD.shape[0], dense_BD.shape[1], len(vectors)
        pointers, strides = _addresses(vectors)
        out = torch.empty(batch, dim + count * (count - 1) // 2, dtype=dense_BD.dtype)
        if _kernel(lib, "forward", out.dtype)(pointers, strides, count, batch, dim, out.data_ptr()) != 0:
            raise MemoryError("dot interaction: no memory for the kernel's scratch")
        ctx.lib = lib
        ctx.save_for_backward(*vectors)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        vectors = ctx.saved_tensors
        batch, dim, count = vectors[0].shape[0], vectors[0].shape[1], len(vectors)
        pointers, strides = _addresses(vectors)
        grad_out = grad_out.to(vectors[0].dtype)
        if grad_out.stride(1) != 1:  # rows may lie apart (the first columns of a padded GEMM's output), not values
            grad_out = grad_out.contiguous()
        grad = torch.empty(count, batch, dim, dtype=vectors[0].dtype)  # each vector's gradient contiguous
        if _kernel(ctx.lib, "backward", grad.dtype)(pointers, strides, count, batch, dim, grad_out.data_ptr(),
                                                     grad_out.stride(0), grad.data_ptr()) != 0:
            raise ValueError(f"dot interaction: width {dim}; expected a multiple of 16")
        return (None, grad[0], *(grad[k].view(vectors[k].shape) for k in range(1, count)))


def _kernel(lib, direction: str, dtype: torch.dtype):
    return getattr(lib, f"disttrain_dot_{direction}_{'bf16' if dtype == torch.bfloat16 else 'f32'}")


def _addresses(vectors: tuple[torch.Tensor, ...]):
    """ctypes arrays: where each vector of sample 0 lies, and the step between samples (in elements)."""
    pointers = (ctypes.c_void_p * len(vectors))(*(v.data_ptr() for v in vectors))
    strides = (ctypes.c_int64 * len(vectors))(*(v.stride(0) for v in vectors))
    return pointers, strides


def _kernel_fits(dense_BD: torch.Tensor, pooled: list[torch.Tensor]) -> bool:
    """CPU vectors of one width, a multiple of 16 (the backward's vector), whose values are contiguous: all fp32
    outside autocast, or all bf16 (under a bf16 autocast the bottom MLP's output and the exchanged vectors are)."""
    if dense_BD.device.type != "cpu" or dense_BD.dim() != 2 or dense_BD.shape[1] % 16:
        return False
    autocast = torch.is_autocast_enabled("cpu")
    if autocast and torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return False
    dtype = torch.bfloat16 if autocast else torch.float32
    dim, batch = dense_BD.shape[1], dense_BD.shape[0]
    return all(v.dtype == dtype and v.shape[0] == batch and v.numel() == batch * dim and v.stride(-1) == 1
               and (v.dim() == 2 or (v.dim() == 3 and v.shape[1] == 1)) for v in (dense_BD, *pooled))


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16) if t.dtype == torch.float32 else t


def dot_interaction_cat(dense_BD: torch.Tensor, pooled: list[torch.Tensor], pairs_flat: torch.Tensor) -> torch.Tensor:
    """DLRM's top-MLP input [B, D + P]: the dense vector, then the dot products of the pairs `pairs_flat` of
    (dense, *pooled) (each pooled [B, 1, D]). With DLRM's whole lower triangle, fp32 vectors (or bf16 ones under a
    bf16 autocast) and the compiled library in use (from a training run's first optimizer step, unless
    `train.sparse_kernel=torch`), one kernel reads the vectors in place and writes the result."""
    lib = row_kernels.loaded()
    if lib is not None and _lower_rows(len(pooled) + 1, pairs_flat):
        if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
            # fp32 tables' vectors under a bf16 autocast: rounded to bf16 here, as the torch path's cast does
            dense_BD, pooled = _bf16(dense_BD), [_bf16(p) for p in pooled]
        if _kernel_fits(dense_BD, pooled):
            return _CompiledDotInteraction.apply(lib, dense_BD, *pooled)
    vectors_BVD = torch.cat([dense_BD.unsqueeze(1), *pooled], dim=1)
    return torch.cat([dense_BD, dot_interaction(vectors_BVD, pairs_flat)], dim=1)
