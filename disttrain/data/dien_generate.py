"""DIEN samples with a planted sequential signal: the benchmark's shape, clicks that follow the user's latest
interest (`disttrain data dien-synthetic` writes them as the benchmark's files; `data.source=synthetic` with
DIEN trains on them directly)."""

from __future__ import annotations

import numpy as np

from disttrain.data.dien_files import DienDataset, DienSamples


def generate(*, users: int, items: int, cats: int, train_samples: int, seed: int = 0,
             mean_history: float = 12.0, max_history: int = 100) -> DienDataset:
    """Samples in the benchmark's shape whose clicks follow the user's *latest* interest.

    Every item belongs to one category (id 0 of items and categories is the reserved default and never
    drawn). A user's behaviour categories walk a fixed chain: each step stays in its category (p 0.5), moves
    to that category's fixed successor (p 0.4) or jumps anywhere (p 0.1); items are drawn within the
    category. A clicked target (label 1) is the walk's next step; its non-clicked twin (label 0, same user
    and history, as in the benchmark's files) carries the clicked target of another random sample, so targets
    alone say nothing (AUC 0.5 without the history) and the signal sits in the order of the history.
    """
    rng = np.random.Generator(np.random.Philox(key=[seed & (2**64 - 1), 0xD1E4]))
    cat_of_item = np.zeros(items, dtype=np.int64)
    cat_of_item[1:] = rng.integers(1, cats, items - 1)
    order = np.argsort(cat_of_item[1:], kind="stable") + 1
    starts = np.searchsorted(cat_of_item[order], np.arange(cats + 1))
    nonempty = np.flatnonzero(np.diff(starts) > 0)  # categories that hold items
    successor = rng.permutation(nonempty)
    succ = np.zeros(cats, dtype=np.int64)
    succ[nonempty] = successor

    def draw_item(c: np.ndarray) -> np.ndarray:
        lo, hi = starts[c], starts[c + 1]
        return order[lo + (rng.random(c.size) * (hi - lo)).astype(np.int64)]

    def walk_step(c: np.ndarray) -> np.ndarray:
        u = rng.random(c.size)
        jump = nonempty[rng.integers(0, nonempty.size, c.size)]
        return np.where(u < 0.5, c, np.where(u < 0.9, succ[c], jump))

    def make(pairs: int) -> DienSamples:
        lengths = np.minimum(1 + rng.geometric(1.0 / mean_history, pairs) - 1, max_history)
        lengths = np.maximum(lengths, 1)
        offsets = np.zeros(pairs + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        hist_cat = np.empty(offsets[-1], dtype=np.int64)
        current = nonempty[rng.integers(0, nonempty.size, pairs)]
        for t in range(int(lengths.max())):
            alive = np.flatnonzero(lengths > t)
            hist_cat[offsets[alive] + t] = current[alive]
            current[alive] = walk_step(current[alive])
        # `current` is now each walk's next step: the clicked target's category
        pos_item = draw_item(current)
        neg_item = pos_item[np.roll(rng.permutation(pairs), 1)] if pairs > 1 else pos_item
        uid = rng.integers(0, users, pairs)
        hist_mid = draw_item(hist_cat)
        # two samples per pair, clicked first, sharing user and history
        rep = np.repeat(np.arange(pairs), 2)
        lengths2 = lengths[rep]
        offsets2 = np.zeros(2 * pairs + 1, dtype=np.int64)
        np.cumsum(lengths2, out=offsets2[1:])
        gather = np.repeat(offsets[rep] - offsets2[:-1], lengths2) + np.arange(offsets2[-1])
        target = np.stack([pos_item, neg_item], 1).reshape(-1)
        return DienSamples(
            labels=np.tile(np.array([1, 0], dtype=np.uint8), pairs), uid=uid[rep], mid=target,
            cat=cat_of_item[target], offsets=offsets2, hist_mid=hist_mid[gather], hist_cat=hist_cat[gather])

    train = make(max(1, train_samples // 2))
    test = make(max(1, train_samples // 20))
    # the negative pool: every behaviour of the training split (as reviews-info holds every review)
    return DienDataset(train, test, train.hist_mid.copy(), train.hist_cat.copy(), (users, items, cats),
                       description=f"generated ({len(train)} train / {len(test)} test samples, seed {seed})")
