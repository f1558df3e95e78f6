"""`disttrain data prepare` on a generated dataset of one's own (string, int and multi-hot columns, a planted
signal), and training on it: Parquet and CSV give identical datasets, the ids follow the rules (vocabulary with
threshold and out-of-vocabulary id, first-seen order, stable hashing), the transforms use the training split's
statistics, `--vocab-from` maps a new day, ranks read the same global batches with multi-hot bags, and 2 sharded
ranks train like one process. Bad input is one line and leaves nothing that looks complete."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from disttrain.data.prepared import CriteoData, open_dataset
from disttrain.prepare.hashing import hash_text
from disttrain.prepare.schema import load_schema
from disttrain.prepare.tabular import PrepareOptions, prepare
from disttrain.tables import EmbeddingTableSpec
from tests.launch_helpers import cli, disttrain, summary

ROWS = 4000
SCHEMA = """label: clicked
dense: {age: standardize, price: log1p, score: minmax}
categorical:
  country: {}
  user_id: {hash: 512}
  item_id: {min_count: 3}
  tags: {multi_hot: {max_length: 4}, pooling: mean}
"""
COUNTRIES = ["JP", "US", "DE", "FR", "BR", "IN"]


def events(n: int, seed: int, extra_items: int = 0) -> dict:
    """Columns with a planted signal: the click rate depends on the country and on the tags."""
    rng = np.random.default_rng(seed)
    country = rng.choice(COUNTRIES, n, p=[0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    tags = [[f"t{t}" for t in rng.integers(0, 30, rng.integers(0, 7))] for _ in range(n)]
    score = {c: s for c, s in zip(COUNTRIES, [1.5, -1.0, 0.5, -0.5, 0.0, 1.0])}
    logit = np.array([score[c] for c in country]) + np.array([sum(int(t[1:]) % 3 - 1 for t in ts) for ts in tags])
    return {
        "clicked": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64),
        "age": rng.integers(18, 80, n).astype(np.float64),
        "price": np.round(rng.exponential(20, n), 3),
        "score": rng.normal(size=n).round(4),
        "country": country,
        "user_id": np.array([f"u{u}" for u in rng.integers(0, 900, n)]),
        "item_id": rng.integers(0, 300 + extra_items, n),
        "tags": tags,
    }


def write_parquet(path: Path, cols: dict, row_group: int = 700) -> Path:
    table = pa.table({k: (pa.array(v, pa.list_(pa.string())) if k == "tags" else v) for k, v in cols.items()})
    pq.write_table(table, path, row_group_size=row_group)
    return path


def write_csv(path: Path, cols: dict, *, delimiter: str = ",", header: bool = True) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        if header:
            w.writerow(cols)
        for i in range(len(cols["clicked"])):
            w.writerow([("|".join(cols[k][i]) if k == "tags" else cols[k][i]) for k in cols])
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    (root / "schema.yaml").write_text(SCHEMA)
    cols = events(ROWS, seed=0)
    write_parquet(root / "events.parquet", cols)
    out = root / "pq"
    prepare([str(root / "events.parquet")], load_schema(root / "schema.yaml"), PrepareOptions(out=out, progress=False))
    return root, cols, out


def _files(out: Path) -> dict:
    meta = json.loads((out / "meta.json").read_text())
    return {f: v["sha256"] for f, v in meta["files"].items()}


def test_parquet_csv_gzip_and_headerless_tsv_give_the_same_dataset(data, tmp_path):
    root, cols, out = data
    schema = load_schema(root / "schema.yaml")
    for name, path, extra in [
        ("csv", write_csv(tmp_path / "e.csv", cols), {}),
        ("gz", write_csv(tmp_path / "e.csv.gz", cols), {}),
        ("tsv", write_csv(tmp_path / "e.tsv", cols, delimiter="\t", header=False), {"column_names": ",".join(cols)}),
    ]:
        prepare([str(path)], schema, PrepareOptions(out=tmp_path / name, progress=False, **extra))
        assert _files(tmp_path / name) == _files(out), name


def test_ids_follow_the_rules(data):
    root, cols, out = data
    meta = json.loads((out / "meta.json").read_text())
    train = meta["splits"]["train"][1]
    assert meta["splits"] == {"train": [0, 3600], "val": [3600, 3800], "test": [3800, 4000]}
    tables = {t["name"]: t for t in meta["tables"]}
    sparse = np.fromfile(out / "sparse.i32", dtype=np.int32).reshape(3, ROWS)
    # Vocabulary, frequency order: id 1 is the most frequent training value; ties by key; id 0 below min_count.
    values, counts = np.unique(cols["item_id"][:train], return_counts=True)
    keep = counts >= 3
    keys = np.array([hash_text(str(v)) for v in values[keep]], dtype=np.uint64)
    order = np.lexsort((keys, -counts[keep]))
    want = {int(v): i + 1 for i, v in enumerate(values[keep][order])}
    np.testing.assert_array_equal(sparse[2], [want.get(int(v), 0) for v in cols["item_id"]])
    assert tables["item_id"]["rows"] == len(want) + 1
    np.testing.assert_array_equal(np.fromfile(out / "vocab" / "item_id.u64", dtype=np.uint64), keys[order])
    # Hashing: FNV-1a 64 of the text, modulo the rows; the published test vector of "a" pins the algorithm.
    assert hash_text("a") == 0xAF63DC4C8601EC8C
    np.testing.assert_array_equal(sparse[1], [hash_text(u) % 512 for u in cols["user_id"]])
    assert tables["user_id"]["rows"] == 512 and tables["user_id"]["mode"] == "hash"
    # Multi-hot: offsets and ids per row, cut at max_length (and counted), pooled by mean.
    offsets = np.fromfile(out / "multi" / "tags.offsets.i64", dtype=np.int64)
    ids = np.fromfile(out / "multi" / "tags.values.i32", dtype=np.int32)
    vocab = {int(k): i + 1 for i, k in enumerate(np.fromfile(out / "vocab" / "tags.u64", dtype=np.uint64))}
    for r in (0, 1, 7, 3999):
        assert list(ids[offsets[r]:offsets[r + 1]]) == [vocab.get(hash_text(t), 0) for t in cols["tags"][r][:4]]
    long = [len(t) - 4 for t in cols["tags"] if len(t) > 4]
    assert (tables["tags"]["truncated_rows"], tables["tags"]["truncated_values"]) == (len(long), sum(long))
    assert tables["tags"]["pooling"] == "mean"


def test_first_seen_order_and_transforms(data, tmp_path):
    root, cols, out = data
    (tmp_path / "s.yaml").write_text(SCHEMA + "id_order: first-seen\n")
    prepare([str(root / "events.parquet")], load_schema(tmp_path / "s.yaml"), PrepareOptions(out=tmp_path / "fs",
                                                                                              progress=False))
    sparse = np.fromfile(tmp_path / "fs" / "sparse.i32", dtype=np.int32).reshape(3, ROWS)
    first = list(dict.fromkeys(cols["country"][:3600]))
    np.testing.assert_array_equal(sparse[0], [first.index(c) + 1 for c in cols["country"]])
    dense = np.fromfile(out / "dense.f32", dtype=np.float32).reshape(ROWS, 3)
    raw = np.stack([cols["age"], cols["price"], cols["score"]], axis=1).astype(np.float32).astype(np.float64)
    train = raw[:3600]
    np.testing.assert_allclose(dense[:, 0], (raw[:, 0] - train[:, 0].mean()) / train[:, 0].std(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(dense[:, 1], np.log1p(raw[:, 1]), rtol=1e-6)
    lo, hi = train[:, 2].min(), train[:, 2].max()
    np.testing.assert_allclose(dense[:, 2], (raw[:, 2] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_a_new_day_maps_through_the_old_vocabularies(data, tmp_path):
    root, _, out = data
    day2 = events(1000, seed=5, extra_items=50)
    write_parquet(tmp_path / "day2.parquet", day2)
    result = cli("data", "prepare", str(tmp_path / "day2.parquet"), "--vocab-from", str(out), "--out",
                 str(tmp_path / "day2"), "--quiet")
    assert result.returncode == 0, result.stderr
    new = json.loads((tmp_path / "day2" / "meta.json").read_text())
    old = json.loads((out / "meta.json").read_text())
    assert [t["rows"] for t in new["tables"]] == [t["rows"] for t in old["tables"]]
    assert new["dense"] == old["dense"]  # the same statistics, hence the same transforms
    known = {int(k): i + 1 for i, k in enumerate(np.fromfile(out / "vocab" / "item_id.u64", dtype=np.uint64))}
    ids = np.fromfile(tmp_path / "day2" / "sparse.i32", dtype=np.int32).reshape(3, 1000)[2]
    want = [known.get(hash_text(str(v)), 0) for v in day2["item_id"]]
    np.testing.assert_array_equal(ids, want)
    assert new["tables"][2]["out_of_vocabulary"] == want.count(0) > 0


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_read_identical_global_batches_with_multi_hot_bags(data, shuffle):
    _, _, out = data
    info = open_dataset(out)
    tables = [EmbeddingTableSpec(n, r, 4) for n, r in zip(info.table_names, info.table_rows)]
    reader = CriteoData(info, tables, global_batch=120, seed=3, shuffle=shuffle, shuffle_window=4096)
    for step in (0, 29, 31):  # 30 batches per epoch: across the epoch boundary too
        whole = reader.batch(step, rank=0, world_size=1)
        for world in (2, 3):
            parts = [reader.batch(step, rank=r, world_size=world) for r in range(world)]
            for r, part in enumerate(parts):
                lo, hi = r * 120 // world, (r + 1) * 120 // world
                piece = whole.sparse.slice_samples(lo, hi)
                assert part.sparse.lengths.tolist() == piece.lengths.tolist()
                assert part.sparse.values.tolist() == piece.values.tolist()
                assert part.labels.tolist() == whole.labels[lo:hi].tolist()
    lengths = whole.sparse.split()[3][0]
    assert lengths.max() <= 4 and (lengths == 0).any()  # multi-hot bags, empty ones too


@pytest.mark.slow
def test_two_sharded_ranks_train_like_one_process_on_it(data, tmp_path):
    _, _, out = data
    job = ["data.source=prepared", f"data.path={out}", "train.batch_size=120", "train.epochs=2", "train.log_every=30",
           "run.progress=false", "run.tensorboard=false", "train.optimizer=adagrad", "model.embedding_dim=8"]
    one = disttrain("train", *job, f"run.output_dir={tmp_path}/one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = disttrain("launch", *job, "launch.nproc_per_node=2", f"run.output_dir={tmp_path}/two",
                    "sharding.tables={user_id: row_wise, tags: column_wise, t2: table_wise}")
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = summary(tmp_path / "one"), summary(tmp_path / "two")
    assert [t["name"] for t in b["plan"]["tables"]] == ["country", "user_id", "item_id", "tags"]
    assert [t["type"] for t in b["plan"]["tables"]][1:] == ["row_wise", "table_wise", "column_wise"]
    assert a["steps"] == b["steps"] == 60
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 and abs(a["eval_auc"] - b["eval_auc"]) < 1e-4
    assert a["eval_auc"] > 0.6  # the planted signal is learned


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "e.csv: column 'pricee' (schema"),
    ("text", "e.csv:3: column price: 'abc' is not a number"),
    ("long", "e.csv:2: column tags: 6 values, more than max_length 4 (the schema's overflow: error"),
    ("parquet", "b.parquet: column item_id is string, but the first file has it as int64"),
    ("schema", "s.yaml: dense.age: got 'sqrt', expected one of none, log1p, standardize, minmax"),
])
def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, case, message):
    root, cols, _ = data
    schema = SCHEMA.replace("4}", "4, overflow: error}") if case == "long" else SCHEMA
    schema = schema.replace("price: log1p", "pricee: log1p") if case == "missing" else schema
    (tmp_path / "s.yaml").write_text(schema.replace("age: standardize", "age: sqrt") if case == "schema" else schema)
    small = {k: list(v[:3]) for k, v in cols.items()}
    small["tags"] = [["a"] * 6, [], ["b"]] if case == "long" else small["tags"]
    small["price"] = [1.0, "abc", 2.0] if case == "text" else small["price"]
    inputs = [write_csv(tmp_path / "e.csv", small)]
    if case == "parquet":
        inputs = [root / "events.parquet", write_parquet(tmp_path / "b.parquet", {**small, "item_id": ["1", "2", "3"]})]
    result = cli("data", "prepare", *map(str, inputs), "--schema", str(tmp_path / "s.yaml"), "--out",
                 str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-out-*"))
