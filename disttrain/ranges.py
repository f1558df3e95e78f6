"""Integer range arithmetic shared by the planner (row and column shards), CPU placement and checkpoint
resharding: pure functions, no torch."""

from __future__ import annotations


def even_split(total: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `parts` near-equal pieces of `total`; empty pieces are dropped.

    >>> even_split(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(total, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        if stop > start:
            ranges.append((start, stop))
        start = stop
    return ranges


def overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    """The common part of two [start, stop) ranges, or None.

    >>> overlap((0, 10), (5, 20))
    (5, 10)
    """
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else None
