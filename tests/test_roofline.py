"""`disttrain bench`'s bounds: ids per sample counted on the run's data, and the bytes each sparse phase moves."""

from __future__ import annotations

import pytest

from disttrain import api
from disttrain.planning.roofline import ids_per_sample, memory_gbps, phase_bounds


def _cfg(*items):
    return api.load_config(None, ["model.flavor=debug", "train.batch_size=64", *items])


def test_ids_per_sample_counts_the_data():
    assert ids_per_sample(_cfg()) == 4  # debug: 4 tables, one id each
    multi = ids_per_sample(_cfg("data.multi_hot_max=3"))
    assert 4 < multi <= 12  # 1 to 3 ids per bag


@pytest.mark.parametrize(("optimizer", "dtype", "row", "state"), [("sgd", "fp32", 32, 0), ("adagrad", "fp32", 32, 1),
                                                                  ("adam", "bf16", 16, 2)])
def test_phase_bounds_are_the_bytes_a_rank_moves(optimizer, dtype, row, state):
    cfg = _cfg(f"train.optimizer={optimizer}", f"model.embedding_dtype={dtype}")
    bounds = phase_bounds(cfg, ids_per_rank=1000.0, gbps=10.0, state_words=state)
    grad = 8 * 4  # debug: dim 8, fp32 row gradients
    assert bounds["embedding_lookup"]["bytes"] == 1000 * (2 * row + 2 * grad)
    assert bounds["optimizer"]["bytes"] == 1000 * (grad + 2 * row + 2 * state * grad)
    assert bounds["optimizer"]["ms"] == pytest.approx(bounds["optimizer"]["bytes"] / 10e9 * 1e3)


def test_memory_bandwidth_is_measured():
    assert memory_gbps(1, seconds=0.05, mib=8) > 0.1
