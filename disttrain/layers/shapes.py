"""Sequence lengths rounded to few distinct values where GEMM shapes are costly to vary.

Under CPU bf16 autocast, oneDNN builds a kernel for every new matmul shape: measured here (AMD EPYC,
AVX-512-bf16, 2 threads) a [128 L, 72] x [72, 80] bf16 matmul takes 1.11 ms on a shape's first call and 0.39 ms
after it; fp32 matmuls cost the same either way. A sequence model whose batches have a different longest
history each (DIEN) thus pays that build on most of its bf16 matmuls, every step. Rounding the length up to a
multiple of `LENGTH_QUANTUM` (the extra positions are padding the model masks anyway) leaves a handful of
shapes, each built once.
"""

from __future__ import annotations

import torch

LENGTH_QUANTUM = 16


def padded_length(longest: int, device_type: str = "cpu") -> int:
    """`longest` rounded up to a multiple of LENGTH_QUANTUM while a lower-precision autocast is on for
    `device_type`; `longest` itself otherwise (fp32 pays for padding and gains nothing).

    >>> padded_length(37)
    37
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     [padded_length(n) for n in (1, 3, 5, 7, 37, 100)]
    [1, 3, 6, 8, 48, 128]
    """
    if longest <= 0 or not torch.is_autocast_enabled(device_type):
        return longest
    return next(size for size in _sizes(longest) if size >= longest)


def _sizes(longest: int):
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ...: powers of two and their halfway points (at most a third of padding)."""
    size = 1
    while True:
        yield size
        if size >= 2:
            yield size * 3 // 2
        size *= 2


def positions(x: torch.Tensor, start: int, count: int, width: int) -> torch.Tensor:
    """`x[:, start : start + count]` with zero positions appended up to `width` ([B, L, D] tensors)."""
    part = x[:, start : start + count]
    return part if width == count else torch.nn.functional.pad(part, (0, 0, 0, width - count))
