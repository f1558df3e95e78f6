"""DLRM's dot interaction with a hand-written backward.

out[b] = the strictly-lower-triangular entries of T[b] @ T[b]^T (pairs of vectors).
Autograd of bmm(T, T^T) then a gather runs two batched GEMMs, a zero-fill and a scatter-add. Here
dL/dT = dZ @ T + dZ^T @ T is one bmm plus one baddbmm reading dZ transposed (no transposed copy), and dZ
lives in a buffer that is zeroed once: only the pair positions are ever written, always the same ones.
"""

from __future__ import annotations

import torch

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
