from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from disttrain.data.synthetic import SyntheticCTR
from disttrain.metrics import accuracy, auc, log_loss
from disttrain.tables import EmbeddingTableSpec

TABLES = [EmbeddingTableSpec("a", 1000, 4), EmbeddingTableSpec("b", 7, 4), EmbeddingTableSpec("c", 100_000, 4)]


@pytest.mark.parametrize("multi_hot", [1, 3])
@pytest.mark.parametrize("distribution", ["uniform", "zipf"])
def test_ranks_together_see_the_global_batch(multi_hot, distribution):
    data = SyntheticCTR(TABLES, num_dense=5, global_batch=24, seed=4, distribution=distribution, multi_hot_max=multi_hot)
    full = data.batch(3)
    for world in (2, 3, 4):
        parts = [data.batch(3, rank=r, world_size=world) for r in range(world)]
        assert torch.equal(torch.cat([p.dense for p in parts]), full.dense)
        assert torch.equal(torch.cat([p.labels for p in parts]), full.labels)
        for r, part in enumerate(parts):
            expected = full.sparse.slice_samples(r * 24 // world, (r + 1) * 24 // world)
            assert torch.equal(part.sparse.lengths, expected.lengths)
            assert torch.equal(part.sparse.values, expected.values)


def test_deterministic_by_seed_and_step():
    a = SyntheticCTR(TABLES, num_dense=5, global_batch=16, seed=1)
    b = SyntheticCTR(TABLES, num_dense=5, global_batch=16, seed=1)
    c = SyntheticCTR(TABLES, num_dense=5, global_batch=16, seed=2)
    assert torch.equal(a.batch(0).sparse.values, b.batch(0).sparse.values)
    assert not torch.equal(a.batch(0).sparse.values, a.batch(1).sparse.values)
    assert not torch.equal(a.batch(0).sparse.values, c.batch(0).sparse.values)
    assert not torch.equal(a.batch(0).dense, a.batch(0, split="eval").dense)


def test_ids_in_range_and_zipf_is_skewed():
    data = SyntheticCTR(TABLES, num_dense=5, global_batch=4096, seed=0, distribution="zipf")
    batch = data.batch(0)
    for spec, (lengths, values) in zip(TABLES, batch.sparse.split()):
        assert int(values.min()) >= 0 and int(values.max()) < spec.num_rows
        assert torch.equal(lengths, torch.ones(4096, dtype=torch.long))
    _, counts = torch.unique(batch.sparse.split()[2][1], return_counts=True)
    assert counts.max() > 100  # a hot row; uniform over 100k rows would give ~1
    uniform = SyntheticCTR(TABLES, num_dense=5, global_batch=4096, seed=0, distribution="uniform").batch(0)
    assert torch.unique(uniform.sparse.split()[2][1], return_counts=True)[1].max() < 10


def test_planted_model_is_learnable():
    data = SyntheticCTR(TABLES, num_dense=5, global_batch=20_000, seed=0)
    batch = data.batch(0, split="eval")
    assert 0.1 < float(batch.labels.mean()) < 0.5
    assert auc(batch.labels.numpy(), batch.probabilities.numpy()) > 0.7


def _brute_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200) / 10.0  # many ties
    assert auc(labels, scores) == pytest.approx(_brute_auc(labels, scores), abs=1e-12)
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_log_loss_and_accuracy():
    labels = np.array([1, 0, 1, 0])
    probs = np.array([0.9, 0.2, 0.4, 0.6])
    assert log_loss(labels, probs) == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.4, 0.4])))
    assert accuracy(labels, probs) == 0.5
