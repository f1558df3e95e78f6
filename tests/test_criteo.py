"""Criteo ingestion (`disttrain data criteo`) and the memory-mapped, rank-sharded reader, on generated raw files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from disttrain.data.prepared import CriteoData, open_dataset
from disttrain.errors import DataError
from disttrain.prepare.criteo import prepare
from disttrain.prepare.criteo_inputs import PrepOptions
from disttrain.prepare.inputs import compute_splits
from disttrain.tables import EmbeddingTableSpec
from tests.criteo_helpers import HEADER, python_parse, python_vocab_ids, raw_rows, read_processed, write_raw
from tests.launch_helpers import clean_env, cli, disttrain, summary

ROWS = raw_rows(3000, seed=1)


def _prep(tmp_path: Path, raws: list[Path], name: str = "out", **kw) -> Path:
    out = tmp_path / name
    prepare([str(p) for p in raws], PrepOptions(out=out, progress=False, **kw))
    return out


@pytest.fixture(scope="module")
def tsv(tmp_path_factory) -> Path:
    return write_raw(tmp_path_factory.mktemp("raw") / "train.txt", ROWS)


def test_parse_matches_python_reading(tmp_path, tsv):
    out = _prep(tmp_path, [tsv], split="none")
    meta, labels, dense, ids = read_processed(out)
    want_labels, want_dense, want_hashes = python_parse(ROWS)
    assert meta["rows"] == len(ROWS)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(dense, want_dense, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(ids, python_vocab_ids(want_hashes, len(ROWS), 1))
    # The vocabulary files map ids back to the raw hashes.
    for t, table in enumerate(meta["tables"]):
        vocab = np.fromfile(out / "vocab" / f"{table['name']}.u32", dtype=np.uint32)
        nz = ids[:, t] > 0
        np.testing.assert_array_equal(vocab[ids[nz, t] - 1], want_hashes[nz, t])
    # Empty categoricals read as the hash 0, as in the reference.
    assert (want_hashes == 0).any()


def test_gz_crlf_and_header_comma_variants_give_the_same_files(tmp_path, tsv):
    base = _prep(tmp_path, [tsv], "base", split="none")
    gz = _prep(tmp_path, [write_raw(tmp_path / "t.txt.gz", ROWS, gz=True)], "gz", split="none")
    crlf = _prep(tmp_path, [write_raw(tmp_path / "crlf.txt", ROWS, crlf=True)], "crlf", split="none")
    csv = _prep(tmp_path, [write_raw(tmp_path / "t.csv", ROWS, delimiter=",", header=HEADER)], "csv", split="none")
    # Another zoo's layout: columns shuffled, other names, floats like "260.0"; a column mapping finds them.
    perm = list(range(40))
    perm[0], perm[39] = 39, 0  # label last, C26 first
    names = [f"f{i}" for i in range(40)]
    names[39] = "clicked"
    zoo_rows = [[r[p] for p in perm] for r in ROWS]
    for r in zoo_rows:
        for k in range(1, 39):
            if 1 <= perm[k] <= 13 and r[k] and not r[k].startswith("-"):
                r[k] = r[k] + ".0"
    zoo_path = write_raw(tmp_path / "zoo.csv", zoo_rows, delimiter=",", header=names)
    dense_cols = ",".join(str(perm.index(c)) for c in range(1, 14))
    sparse_cols = ",".join(str(perm.index(c)) for c in range(14, 40))
    zoo = _prep(tmp_path, [zoo_path], "zoo", split="none", label_column="clicked", dense_columns=dense_cols,
                sparse_columns=sparse_cols)
    want = read_processed(base)
    for out in (gz, crlf, csv, zoo):
        got = read_processed(out)
        for a, b in zip(got[1:], want[1:]):
            np.testing.assert_array_equal(a, b)
    assert json.loads((csv / "meta.json").read_text())["sources"][0]["header"] is True


def test_vocabulary_threshold_and_hashing(tmp_path, tsv):
    splits = compute_splits("kaggle", [len(ROWS)])
    train = splits["train"][1]
    _, _, hashes = python_parse(ROWS)
    out = _prep(tmp_path, [tsv], "t3", vocab_threshold=3)
    meta, _, _, ids = read_processed(out)
    np.testing.assert_array_equal(ids, python_vocab_ids(hashes, train, 3))
    for t, table in enumerate(meta["tables"]):
        assert table["rows"] == ids[:, t].max() + 1 or table["rows"] > ids[:, t].max()
        counts = np.unique(hashes[:train, t], return_counts=True)[1]
        assert table["rows"] == 1 + int((counts >= 3).sum())
    # Hashing, as the reference's --max-ind-range: x % M over all rows, then numbered densely in value order.
    out = _prep(tmp_path, [tsv], "hash", hash_rows=50)
    meta, _, _, ids = read_processed(out)
    for t in range(26):
        modded = hashes[:, t] % 50
        uniq = np.unique(modded)
        np.testing.assert_array_equal(ids[:, t], np.searchsorted(uniq, modded))
        assert meta["tables"][t]["rows"] == uniq.size <= 50


def test_the_old_module_paths_still_import():
    from disttrain.data import criteo, prepared
    from disttrain.prepare import criteo_inputs, inputs

    assert criteo.open_dataset is prepared.open_dataset and criteo.CriteoData is prepared.CriteoData
    assert criteo_inputs.compute_splits is inputs.compute_splits and criteo_inputs.byte_ranges is inputs.byte_ranges


def test_split_boundaries():
    # The reference's Kaggle split: 7 days (the first ones take the remainder); the last day's first half
    # (the larger) is test, the rest validation.
    assert compute_splits("kaggle", [1003]) == {"train": [0, 860], "val": [932, 1003], "test": [860, 932]}
    assert compute_splits("auto", [700]) == compute_splits("kaggle", [700])
    assert compute_splits("days", [10, 10, 7]) == {"train": [0, 20], "val": [24, 27], "test": [20, 24]}
    assert compute_splits("auto", [10, 10, 7]) == compute_splits("days", [10, 10, 7])
    assert compute_splits("files", [8, 3, 2]) == {"train": [0, 8], "val": [8, 11], "test": [11, 13]}
    assert compute_splits("files", [8, 3]) == {"train": [0, 8], "val": [8, 11], "test": [8, 11]}
    assert compute_splits("ratio:8,1,1", [100]) == {"train": [0, 80], "val": [80, 90], "test": [90, 100]}
    assert compute_splits("none", [5]) == {"train": [0, 5], "val": [5, 5], "test": [5, 5]}
    with pytest.raises(DataError, match="--split files: expected 2 files"):
        compute_splits("files", [1])
    with pytest.raises(DataError, match="--split: got 'ratio:1,x'"):
        compute_splits("ratio:1,x", [10])


@pytest.mark.parametrize(("line", "reason"), [
    ("0\t1\t2", "3 fields, expected 40"),
    ("0\t" + "\t".join(["1"] * 4 + ["x1"] + ["1"] * 8) + "\t" + "\t".join(["0a"] * 26), "field I5 (column 6): 'x1' is not a number"),
    ("1\t" + "\t".join(["1"] * 13) + "\t" + "\t".join(["0a"] * 9 + ["zz12"] + ["0a"] * 16), "field C10 (column 24): 'zz12' is not a hex id"),
    ("2\t" + "\t".join(["1"] * 13) + "\t" + "\t".join(["0a"] * 26), "field label (column 1): '2' is not a label"),
])
def test_bad_rows_stop_with_file_line_or_are_skipped(tmp_path, line, reason):
    text = ["\t".join(r) for r in ROWS[:50]]
    text.insert(36, line)
    raw = tmp_path / "bad.txt"
    raw.write_text("\n".join(text) + "\n")
    result = disttrain("data", "criteo", str(raw), "--out", str(tmp_path / "o"), "--quiet")
    assert result.returncode == 2
    err = result.stderr.strip()
    assert err.count("\n") == 0 and f"{raw}:37: {reason}" in err and "--skip-bad-rows" in err, err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".tmp-*"))
    result = disttrain("data", "criteo", str(raw), "--out", str(tmp_path / "o"), "--quiet", "--skip-bad-rows",
                       "--split", "none")
    assert result.returncode == 0, result.stderr
    assert f"skipped {raw}:37: {reason}" in result.stdout
    meta, labels, dense, _ = read_processed(tmp_path / "o")
    assert meta["rows"] == 50 and meta["sources"][0]["bad_rows"] == 1 and meta["sources"][0]["lines"] == 51
    want_labels, want_dense, _ = python_parse(ROWS[:50])
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(dense, want_dense, rtol=1e-6)


def test_damaged_directory_is_refused_before_training(tmp_path, tsv):
    """By a worker (`disttrain train`, as torchrun by hand runs it) and by the launcher's pre-flight (in-process
    here: it fails before any process starts)."""
    out = _prep(tmp_path, [tsv], "d")
    args = ["data.source=criteo", f"data.path={out}", "model.flavor=debug", "train.steps=2",
            "train.batch_size=64", "run.progress=false", f"run.output_dir={tmp_path}/run"]
    data = bytearray((out / "dense.f32").read_bytes())
    data[100] ^= 0x40  # same size, other content
    (out / "dense.f32").write_bytes(bytes(data))
    bad = disttrain("train", *args)
    assert bad.returncode == 2 and "dense.f32: sha256" in bad.stderr and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "train_auc" not in bad.stdout  # refused before the first step
    bad = cli("launch", *args)
    assert bad.returncode == 2 and "dense.f32: sha256" in bad.stderr and bad.stderr.strip().count("\n") == 0, bad.stderr
    (out / "labels.u8").write_bytes(b"\0" * 10)
    bad = cli("launch", *args)
    assert bad.returncode == 2 and "labels.u8: 10 bytes, expected 3000" in bad.stderr, bad.stderr
    (out / "meta.json").write_text("{")
    bad = cli("launch", *args)
    assert bad.returncode == 2 and "meta.json: unreadable metadata" in bad.stderr, bad.stderr
    missing = cli("launch", args[0], f"data.path={tmp_path}/nope", *args[2:])
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path):
    block = "".join("\t".join(r) + "\n" for r in ROWS).encode()
    raw = tmp_path / "big.txt"
    with open(raw, "wb") as f:
        for _ in range(60):  # 180k rows, about 25 MB
            f.write(block)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "disttrain.cli", "data", "criteo", str(raw), "--out", str(out),
                             "--quiet", "--workers", "1"], env=clean_env(), start_new_session=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".tmp-out-*")) and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".tmp-out-*")), "the run never started writing"
    assert not (out / "meta.json").exists()
    bad = cli("launch", "data.source=criteo", f"data.path={out}", "run.progress=false")
    assert bad.returncode == 2 and "interrupted `disttrain data criteo`" in bad.stderr, bad.stderr
    done = disttrain("data", "criteo", str(raw), "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".tmp-out-*"))  # the killed run's partial output was removed
    assert open_dataset(out, verify="checksum").rows == 180_000


def _tables(out: Path) -> list[EmbeddingTableSpec]:
    return [EmbeddingTableSpec(t["name"], t["rows"], 4) for t in open_dataset(out).meta["tables"]]


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_read_exactly_the_global_batches(tmp_path, tsv, shuffle):
    out = _prep(tmp_path, [tsv], "r")
    info = open_dataset(out)
    batch = 96
    one = CriteoData(info, _tables(out), global_batch=batch, seed=5, shuffle=shuffle, shuffle_window=4096)
    spe = one.steps_per_epoch
    assert spe == (info.split("train")[1] - info.split("train")[0]) // batch
    seen = []
    for step in list(range(spe)) + [spe, spe + 1]:  # a whole epoch and into the next one
        whole = one.batch(step)
        for world in (2, 3):
            parts = [CriteoData(info, _tables(out), global_batch=batch, seed=5, shuffle=shuffle,
                                shuffle_window=4096).batch(step, rank=r, world_size=world) for r in range(world)]
            np.testing.assert_array_equal(np.concatenate([p.labels.numpy() for p in parts]), whole.labels.numpy())
            np.testing.assert_array_equal(np.concatenate([p.dense.numpy() for p in parts]), whole.dense.numpy())
            ids = [p.sparse.values.numpy().reshape(26, -1) for p in parts]
            np.testing.assert_array_equal(np.concatenate(ids, axis=1), whole.sparse.values.numpy().reshape(26, -1))
        if step < spe:
            seen.append(one.train_rows(step, 0, batch))
    rows = np.concatenate(seen)
    assert rows.size == np.unique(rows).size == spe * batch  # an epoch: no row twice
    assert rows.min() >= 0 and rows.max() < info.split("train")[1]
    assert (rows[:batch] == np.arange(batch)).all() != shuffle
    # Another seed, another order; the next epoch, another order.
    other = CriteoData(info, _tables(out), global_batch=batch, seed=6, shuffle=shuffle, shuffle_window=4096)
    assert (not np.array_equal(other.train_rows(0, 0, batch), one.train_rows(0, 0, batch))) == shuffle
    assert (not np.array_equal(one.train_rows(spe, 0, batch), one.train_rows(0, 0, batch))) == shuffle


def test_eval_batches_cover_each_row_once_with_padding_masked(tmp_path, tsv):
    out = _prep(tmp_path, [tsv], "e")
    info = open_dataset(out)
    data = CriteoData(info, _tables(out), global_batch=64, seed=0)
    lo, hi = info.split("test")
    labels, valid = [], []
    for step in range(data.eval_batches("test")):
        for r in range(2):
            b = data.batch(step, rank=r, world_size=2, split="test")
            labels.append(b.labels.numpy()[b.valid.numpy()])
            valid.append(b.valid.numpy())
    assert sum(v.sum() for v in valid) == hi - lo
    _, want, _, _ = read_processed(out)
    np.testing.assert_array_equal(np.concatenate(labels), want[lo:hi])


def _train(tmp_path, name, *extra, data):
    out = tmp_path / name
    result = disttrain("launch", "data.source=criteo", f"data.path={data}", "model.flavor=debug",
                       "train.batch_size=64", "train.optimizer=adagrad", "train.lr=0.05", "train.log_every=10",
                       "run.progress=false", f"run.output_dir={out}", *extra)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return summary(out) | {"_stdout": result.stdout}


@pytest.mark.slow
def test_sharded_training_on_criteo_equals_one_rank_and_resumes(tmp_path, tsv):
    data = _prep(tmp_path, [tsv], "data", vocab_threshold=2)
    one = _train(tmp_path, "one", "launch.nproc_per_node=1", "train.epochs=2", data=data)
    two = _train(tmp_path, "two", "launch.nproc_per_node=2", "train.epochs=2", "sharding.strategy=row_wise",
                 f"checkpoint.dir={tmp_path}/ck", "checkpoint.every_steps=40", data=data)
    spe = (compute_splits("kaggle", [3000])["train"][1]) // 64
    assert one["steps"] == two["steps"] == 2 * spe
    test_lo, test_hi = compute_splits("kaggle", [3000])["test"]
    assert one["eval_split"] == "test" and one["eval_samples"] == two["eval_samples"] == test_hi - test_lo
    assert abs(one["train_loss"] - two["train_loss"]) < 1e-4
    assert abs(one["eval_auc"] - two["eval_auc"]) < 1e-4 and one["eval_auc"] > 0.5
    meta = json.loads((tmp_path / "ck" / "step_00000040" / "meta.json").read_text())
    assert meta["data"]["epoch"] == 40 // spe and meta["data"]["batch_in_epoch"] == 40 % spe
    assert meta["data"]["rows_consumed"] == 40 * 64 and meta["data"]["fingerprint"] == open_dataset(data).fingerprint
    resumed = _train(tmp_path, "resumed", "launch.nproc_per_node=2", "train.epochs=2", "sharding.strategy=table_wise",
                     f"train.resume={tmp_path}/ck/step_00000040", data=data)
    assert resumed["steps"] == two["steps"]
    assert abs(resumed["train_loss"] - two["train_loss"]) < 1e-4
    assert abs(resumed["eval_auc"] - two["eval_auc"]) < 1e-4


def test_target_auc_stops_early(tmp_path, tsv):
    data = _prep(tmp_path, [tsv], "data")
    run = _train(tmp_path, "t", "launch.nproc_per_node=2", "train.steps=200", "train.eval_every=5",
                 "train.target_auc=0.5", data=data)
    assert run["reached_target_at_step"] is not None and run["steps"] == run["reached_target_at_step"] < 200
    assert "target AUC 0.5 reached at step" in run["_stdout"]
    evals = [h for h in run["history"] if h.get("split") == "val"]
    assert evals and evals[-1]["auc"] >= 0.5 and all(e["auc"] < 0.5 for e in evals[:-1])
