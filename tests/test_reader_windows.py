"""The prepared-data reader's training order (issue 31). Every epoch visits each training row exactly once across
ranks and steps, for every split size, batch, world size and seed, also when the short last block lands in an
earlier shuffle window (540,000 rows, batch 256, step 1021 used to loop forever while memory grew); and a reader
that cannot advance stops with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from disttrain.data.prepared import BLOCK_ROWS, CriteoData, ShuffleOrder, open_dataset
from disttrain.data.prepared_format import FORMAT
from disttrain.errors import DataError
from disttrain.fileio import sha256_file
from disttrain.tables import EmbeddingTableSpec
from tests.launch_helpers import disttrain, summary

WINDOW = 1 << 18  # data.shuffle_window's default (a multiple of BLOCK_ROWS)


def _epoch(order: ShuffleOrder, epoch: int, *, batch: int, world: int) -> np.ndarray:
    """The rows every rank reads in every global batch of `epoch`, positions as `CriteoData.batch` asks for them:
    batch b, rank r of `world`: [b * batch + r * local, ... + local)."""
    local = batch // world
    return np.concatenate([order.rows(epoch, b * batch + r * local, local)
                           for b in range(order.num_rows // batch) for r in range(world)])


def _visits_each_row_once(order: ShuffleOrder, *, batch: int, world: int, epochs=(0, 1)) -> None:
    lo, n = order.first_row, order.num_rows
    for epoch in epochs:
        whole = order.rows(epoch, 0, n)
        np.testing.assert_array_equal(np.sort(whole), np.arange(lo, lo + n))  # the order is a permutation
        seen = _epoch(order, epoch, batch=batch, world=world)
        np.testing.assert_array_equal(seen, whole[: n // batch * batch])  # ranks split it, nothing else
        assert np.unique(seen).size == seen.size


@st.composite
def geometries(draw):
    """Small blocks and windows; split sizes at, just below and just above window and block multiples."""
    block = draw(st.sampled_from([1, 2, 3, 4, 8]))
    window = block * draw(st.integers(1, 5))
    n = (draw(st.integers(0, 5)) * window + draw(st.integers(0, window // block)) * block
         + draw(st.sampled_from([-1, 0, 1, block - 1, -(block - 1)])))
    world = draw(st.integers(1, 3))
    batch = world * draw(st.integers(1, 6))
    n = max(n, batch)
    return dict(num_rows=n, window=window, block_rows=block, seed=draw(st.integers(-(2**63), 2**64 - 1)),
                first_row=draw(st.sampled_from([0, 17])), batch=batch, world=world)


@settings(max_examples=300, deadline=None)
@given(geometries())
def test_every_epoch_visits_each_row_once_across_ranks_and_steps(geometry):
    batch, world = geometry.pop("batch"), geometry.pop("world")
    _visits_each_row_once(ShuffleOrder(**geometry), batch=batch, world=world)


def test_every_seed_has_its_own_order():
    """Seeds from 2**63 up (and negative ones, as two's complement) once passed through float64 and collided."""
    orders = {seed: ShuffleOrder(64, window=8, seed=seed, block_rows=2).rows(0, 0, 64).tobytes()
              for seed in (0, 1, 2**63 - 1, 2**63 + 1, 2**63 + 2, 2**64 - 3, -1, -2)}
    assert len(set(orders.values())) == len(orders)
    assert orders[-1] == ShuffleOrder(64, window=8, seed=2**64 - 1, block_rows=2).rows(0, 0, 64).tobytes()


def _window_lengths(order: ShuffleOrder, epoch: int) -> np.ndarray:
    """What each window's blocks hold, counted block by block (the index arithmetic, no rows)."""
    blocks, per = order.blocks(epoch)[0], order.window // order.block_rows
    held = [min(order.block_rows, order.num_rows - int(b) * order.block_rows) for b in blocks]
    return np.array([sum(held[i : i + per]) for i in range(0, len(held), per)])


@settings(max_examples=300, deadline=None)
@given(windows=st.integers(0, 12), blocks=st.integers(0, WINDOW // BLOCK_ROWS), delta=st.integers(-4095, 4095),
       seed=st.integers(0, 2**64 - 1), epoch=st.integers(0, 3))
def test_the_real_window_and_block_sizes_start_each_window_where_the_last_one_ends(windows, blocks, delta, seed,
                                                                                 epoch):
    n = max(1, windows * WINDOW + blocks * BLOCK_ROWS + delta)
    starts = ShuffleOrder(n, window=WINDOW, seed=seed).blocks(epoch)[1]
    np.testing.assert_array_equal(np.diff(starts), _window_lengths(ShuffleOrder(n, window=WINDOW, seed=seed), epoch))
    assert starts[0] == 0 and starts[-1] == n and (np.diff(starts) > 0).all()


@pytest.mark.timeout(60)  # today's arithmetic loops here forever
@pytest.mark.parametrize("seed", [0, 2])  # the short last block lands in the first window
def test_the_issue_geometry_540000_rows_batch_256_step_1021(seed):
    order = ShuffleOrder(540_000, window=WINDOW, seed=seed)
    assert _window_lengths(order, 0)[0] < WINDOW  # the case that looped
    rows = order.rows(0, 1021 * 256, 256)
    assert rows.size == np.unique(rows).size == 256
    _visits_each_row_once(order, batch=256, world=2, epochs=(0,))


def test_a_reader_that_cannot_advance_is_one_line(monkeypatch):
    """Windows located by `position // window` (the old arithmetic): the position past the short first window
    lies in none, and the reader says so instead of looping."""
    order = ShuffleOrder(540_000, window=WINDOW, seed=0, where="/data/prepared")
    blocks = order.blocks(0)[0]
    monkeypatch.setattr(order, "blocks", lambda epoch: (blocks, np.array([0, WINDOW, 2 * WINDOW, 540_000])))
    with pytest.raises(DataError) as error:
        order.rows(0, 1021 * 256, 256)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("/data/prepared: training position 261472 of epoch 0 lies outside shuffle window 0")


# ---- end to end: a prepared directory larger than two windows ---------------------------------------------------

TRAIN_ROWS, HELD_OUT = 540_000, 2048
TABLE_ROWS = (50, 30)


def _write_prepared(out, *, train: int, held_out: int) -> None:
    """A directory in the prepared format (version 2, hashed ids), written directly: labels, 2 dense, 2 tables."""
    rows = train + 2 * held_out
    rng = np.random.default_rng(0)
    out.mkdir()
    ids = np.stack([rng.integers(0, r, rows, dtype=np.int32) for r in TABLE_ROWS])  # column-major
    dense = rng.random((rows, 2), dtype=np.float32)
    (out / "labels.u8").write_bytes((dense[:, 0] + 0.3 * rng.random(rows) > 0.8).astype(np.uint8).tobytes())
    (out / "dense.f32").write_bytes(dense.tobytes())
    (out / "sparse.i32").write_bytes(ids.tobytes())
    files = {f: {"bytes": (out / f).stat().st_size, "sha256": sha256_file(out / f)}
             for f in ("labels.u8", "dense.f32", "sparse.i32")}
    tables = [{"name": f"C{i + 1}", "rows": r, "mode": "hash", "multi_hot": False} for i, r in enumerate(TABLE_ROWS)]
    splits = {"train": [0, train], "val": [train, train + held_out], "test": [train + held_out, rows]}
    (out / "meta.json").write_text(json.dumps({"format": FORMAT, "version": 2, "rows": rows, "num_dense": 2,
                                               "tables": tables, "splits": splits, "files": files}))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("reader-windows") / "prepared"
    _write_prepared(out, train=TRAIN_ROWS, held_out=HELD_OUT)
    return out


@pytest.mark.timeout(60)
def test_the_reader_crosses_the_short_window_on_a_prepared_directory(prepared):
    info = open_dataset(prepared, verify="checksum")
    tables = [EmbeddingTableSpec(name, rows, 4) for name, rows in zip(info.table_names, TABLE_ROWS)]
    one = CriteoData(info, tables, global_batch=256, seed=0)  # the real window and blocks
    assert one.order.blocks(0)[1][1] < WINDOW  # seed 0: the short last block is in the first window
    two = CriteoData(info, tables, global_batch=256, seed=0)
    spe = one.steps_per_epoch
    for step in (1019, 1020, 1021, 1022, spe - 1, spe + 1021):  # across the short window, into the next epoch
        whole = one.batch(step)
        parts = [two.batch(step, rank=r, world_size=2) for r in range(2)]
        np.testing.assert_array_equal(np.concatenate([p.labels.numpy() for p in parts]), whole.labels.numpy())
        np.testing.assert_array_equal(np.concatenate([p.dense.numpy() for p in parts]), whole.dense.numpy())
    seen = np.concatenate([one.train_rows(step, 0, 256) for step in range(spe)])
    assert seen.size == np.unique(seen).size == spe * 256 and seen.max() < TRAIN_ROWS


@pytest.mark.timeout(120)
def test_training_crosses_the_short_window(prepared, tmp_path):
    """`disttrain train` with global batches of 4096: batch 63 holds position 261,472, where the first window
    (the short one, seed 0) ends; today's reader never returned from it."""
    result = disttrain("train", "data.source=prepared", f"data.path={prepared}", "model.flavor=debug",
                       "train.batch_size=4096", "train.steps=66", "train.seed=0", "train.log_every=33",
                       "data.eval_batches=1", "run.progress=false", "run.tensorboard=false",
                       f"run.output_dir={tmp_path}/run", timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(tmp_path / "run")["steps"] == 66
