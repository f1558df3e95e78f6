"""TorchRec users' files: the preprocessed Criteo 1TB days (`day_N_{labels,dense,sparse}.npy`) and the MLPerf
multi-hot days (`day_N_sparse_multi_hot.npz`) are read as they are, and read back exactly what was written."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest

from disttrain.config import Config
from disttrain.data.prepared import CriteoData, open_data
from disttrain.data.torchrec_days import write_days
from disttrain.errors import DisttrainError
from disttrain.tables import EmbeddingTableSpec
from tests.launch_helpers import clean_env, disttrain, summary

SIZES = [50 + 7 * j for j in range(26)]
MULTI = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 10, 7, 10, 3, 1, 1]  # MLPerf's, 100 -> 10


def days(rows: list[int], *, multi_hot: bool, seed: int = 0) -> list[dict]:
    """Raw ids up to 4x the table sizes (the reader folds them by modulo, as TorchRec's does)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in rows:
        if multi_hot:
            sparse = [rng.integers(0, 4 * SIZES[j], size=(n, MULTI[j]), dtype=np.int32) for j in range(26)]
        else:
            sparse = rng.integers(0, 4 * np.array(SIZES), size=(n, 26), dtype=np.int64)
        out.append({"labels": rng.integers(0, 2, n), "dense": rng.random((n, 13), dtype=np.float32), "sparse": sparse})
    return out


def read_all(path, split: str, world: int = 1):
    """Every row of `split` in file order, as the reader hands them out, gathered over `world` ranks."""
    info = open_data(str(path), table_rows=SIZES)
    tables = [EmbeddingTableSpec(name, rows, 4) for name, rows in zip(info.table_names, SIZES)]
    data = CriteoData(info, tables, global_batch=6, shuffle=False)
    labels, dense, lengths, values = [], [], [], []
    steps = data.steps_per_epoch if split == "train" else data.eval_batches(split)  # train: whole batches
    for step in range(steps):
        for rank in range(world):
            b = data.batch(step, rank=rank, world_size=world, split=split)
            keep = b.valid.numpy() if b.valid is not None else np.ones(b.labels.shape[0], bool)
            labels.append(b.labels.numpy()[keep])
            dense.append(b.dense.numpy()[keep])
            n = b.labels.shape[0]
            bag_lengths = b.sparse.lengths.numpy().reshape(26, n)
            bag_values = np.split(b.sparse.values.numpy(), np.cumsum(bag_lengths.reshape(-1))[:-1])
            for r in np.flatnonzero(keep):
                lengths.append(bag_lengths[:, r])
                values.append([bag_values[t * n + r] for t in range(26)])
    return info, np.concatenate(labels), np.concatenate(dense), np.array(lengths), values


@pytest.mark.parametrize("multi_hot", [False, True])
def test_days_read_back_what_was_written(tmp_path, multi_hot):
    written = days([40, 30, 17], multi_hot=multi_hot)
    write_days(tmp_path, written, multi_hot=multi_hot)
    info, *_ = read_all(tmp_path, "train")
    assert info.split("train") == (0, 70) and info.split("val") == (70, 70 + math.ceil(17 / 2))
    assert info.split("test") == (79, 87)
    for split in ("train", "val", "test"):
        lo, hi = info.split(split)
        hi = lo + (hi - lo) // 6 * 6 if split == "train" else hi  # the training order reads whole batches
        for world in (1, 2, 3):
            _, labels, dense, lengths, values = read_all(tmp_path, split, world)
            all_labels = np.concatenate([written[d]["labels"] for d in range(3)])[lo:hi]
            all_dense = np.concatenate([written[d]["dense"] for d in range(3)])[lo:hi]
            assert np.array_equal(labels, all_labels) and np.array_equal(dense, all_dense)
            for j in (0, 4, 19):
                if multi_hot:
                    ids = np.concatenate([written[d]["sparse"][j] for d in range(3)])[lo:hi]
                    assert (lengths[:, j] == MULTI[j]).all()
                else:
                    ids = np.concatenate([written[d]["sparse"] for d in range(3)])[lo:hi, j:j + 1]
                    assert (lengths[:, j] == 1).all()
                got = np.stack([v[j] for v in values])
                assert np.array_equal(got, ids % SIZES[j])


def test_dcnv2_trains_sharded_on_multi_hot_days(tmp_path):
    """DLRM-DCNv2 (what TorchRec's multi-hot days are for) on 2 ranks, tables named as TorchRec names them. (Sharded
    == one process on multi-hot bags is tests/test_prepare.py's; the reader is the same.)"""
    write_days(tmp_path / "days", days([256, 256, 64], multi_hot=True), multi_hot=True)
    run = disttrain("launch", "model.name=dlrm_dcnv2", "data.source=torchrec", f"data.path={tmp_path}/days",
                    f"model.table_sizes={SIZES}", "model.embedding_dim=8", "train.batch_size=32", "train.steps=8",
                    "data.eval_batches=1", "run.progress=false", "sharding.strategy=auto", "launch.nproc_per_node=2",
                    f"run.output_dir={tmp_path}/two", env=clean_env())
    assert run.returncode == 0, run.stderr[-2000:]
    b = summary(tmp_path / "two")
    assert b["steps"] == 8 and b["world_size"] == 2 and math.isfinite(b["train_loss"])
    assert b["eval_samples"] == 32 and b["data"]["steps_per_epoch"] == 512 // 32
    assert [t["name"] for t in b["plan"]["tables"]] == [f"cat_{j}" for j in range(26)]  # TorchRec's feature names
    assert {r for t in b["plan"]["tables"] for r in t["ranks"]} == {0, 1}


def test_bad_days_are_one_line(tmp_path):
    from disttrain.data.prepared import SPEC

    write_days(tmp_path / "ok", days([20, 10], multi_hot=False))
    cfg = Config()
    cfg.data.path = str(tmp_path / "ok")
    with pytest.raises(DisttrainError, match=r"model.table_sizes: not set, but .* holds TorchRec's days"):
        SPEC.shape(cfg)

    write_days(tmp_path / "zipped", days([20, 10], multi_hot=True), multi_hot=True)
    src = tmp_path / "zipped" / "day_1_sparse_multi_hot.npz"
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(DisttrainError, match=r"day_1_sparse_multi_hot.npz: member 0.npy is compressed"):
        open_data(str(tmp_path / "zipped"), table_rows=SIZES)

    write_days(tmp_path / "short", days([20, 10], multi_hot=False))
    np.save(tmp_path / "short" / "day_1_dense.npy", np.zeros((9, 13), np.float32))
    with pytest.raises(DisttrainError, match=r"day_1_dense.npy: float32\[9, 13\]; expected 10 rows"):
        open_data(str(tmp_path / "short"), table_rows=SIZES)

    (tmp_path / "one").mkdir()
    write_days(tmp_path / "one", days([20], multi_hot=False))
    with pytest.raises(DisttrainError, match=r"has 1 TorchRec day; expected 2 or more"):
        open_data(str(tmp_path / "one"), table_rows=SIZES)
