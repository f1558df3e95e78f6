"""`disttrain data prepare` on the tables users actually have: Avazu-shaped CSVs (no dense column, a header in the
first file only) prepared in one command and trained on; missing values by policy (statistics over the present
values, a fill per dense column, a missing indicator, a missing id per categorical column, counts in meta.json),
the same from Parquet nulls and NaNs as from the CSV spellings of a missing number; a table of dense columns only;
the header decided per file; and every bad input one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from disttrain.prepare.hashing import hash_text
from disttrain.prepare.schema import from_flags, load_schema
from disttrain.prepare.tabular import PrepareOptions, prepare
from tests.launch_helpers import cli, disttrain, summary

AVAZU = ["id", "click", "hour", "C1", "banner_pos", "site_id", "site_category", "app_id", "device_type", "C14"]
FEATURES = AVAZU[2:]  # every column but id and the label


def avazu_rows(n: int, seed: int) -> list[list[str]]:
    """Avazu's kind of row: a 64-bit id, the click, an hour, hashed hex ids and small integer codes; the click
    rate depends on site_category."""
    rng = np.random.default_rng(seed)
    category = rng.choice(["28905ebd", "50e219e0", "f028772b"], n)
    rate = np.select([category == "28905ebd", category == "50e219e0"], [0.6, 0.1], 0.25)
    click = (rng.random(n) < rate).astype(int)
    return [[str(rng.integers(1 << 62)), str(click[i]), str(14102100 + rng.integers(3)), "1005",
             str(rng.integers(2)), f"{rng.integers(40):08x}", category[i], f"{rng.integers(30):08x}",
             str(rng.integers(1, 3)), str(15700 + rng.integers(20))] for i in range(n)]


def write_lines(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    path.write_text("".join(",".join(r) + "\n" for r in ([header] if header else []) + rows))
    return path


def meta_of(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


@pytest.fixture(scope="module")
def avazu(tmp_path_factory):
    root = tmp_path_factory.mktemp("avazu")
    files = [write_lines(root / "train.csv", avazu_rows(1200, 0), AVAZU),
             write_lines(root / "dev.csv", avazu_rows(200, 1)), write_lines(root / "test.csv", avazu_rows(200, 2))]
    result = cli("data", "prepare", *map(str, files), "--label-column", "click", "--sparse-columns",
                 ",".join(FEATURES), "--split", "files", "--out", str(root / "out"))
    assert result.returncode == 0, result.stderr
    return root, result.stdout


def test_avazu_shaped_csvs_prepare_in_one_command(avazu):
    root, stdout = avazu
    meta = meta_of(root / "out")
    assert [s["rows"] for s in meta["sources"]] == [1200, 200, 200]  # no row skipped, no header read as data
    assert [s["header"] for s in meta["sources"]] == [True, False, False]
    assert meta["splits"] == {"train": [0, 1200], "val": [1200, 1400], "test": [1400, 1600]}
    assert meta["num_dense"] == 0 and meta["dense_names"] == [] and (root / "out" / "dense.f32").stat().st_size == 0
    assert [t["name"] for t in meta["tables"]] == FEATURES
    assert meta["missing"] == dict.fromkeys(FEATURES, 0) and "missing values: none" in stdout
    labels = np.fromfile(root / "out" / "labels.u8", dtype=np.uint8)
    dev = [int(r.split(",")[1]) for r in (root / "dev.csv").read_text().splitlines()]
    np.testing.assert_array_equal(labels[1200:1400], dev)


def test_a_model_trains_on_a_table_without_dense_columns(avazu, tmp_path):
    root, _ = avazu
    result = disttrain("train", "data.source=prepared", f"data.path={root / 'out'}", "model.name=deepfm",
                       "model.flavor=debug", "train.batch_size=100", "train.steps=12", "data.eval_batches=2",
                       "run.progress=false", "run.tensorboard=false", f"run.output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    done = summary(tmp_path)
    assert done["steps"] == 12 and np.isfinite(done["train_loss"]) and 0 <= done["eval_auc"] <= 1


SCHEMA = """label: clicked
dense:
  age: standardize
  price: {transform: log1p, fill: zero, missing_indicator: true}
  score: {transform: minmax, fill: -1}
categorical:
  country: {missing: other}
  city: {}
"""
N = 400


def with_gaps(seed: int) -> dict:
    """Columns with missing values: NaN and nulls in the dense ones, nulls and empty text in the categorical ones."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, N).astype(float)
    age[rng.random(N) < 0.2] = np.nan
    price = np.round(rng.exponential(20, N), 3)
    score = rng.normal(size=N).round(4)
    score[rng.random(N) < 0.1] = np.nan
    country = rng.choice(["JP", "US", "DE", ""], N).astype(object)
    city = rng.choice(["a", "b", "c", "d"], N).astype(object)
    country[rng.random(N) < 0.1] = None
    city[rng.random(N) < 0.15] = None
    return {"clicked": rng.integers(0, 2, N), "age": age, "price": price, "price_null": rng.random(N) < 0.25,
            "score": score, "country": country, "city": city}


def gaps_parquet(path: Path, cols: dict) -> Path:
    table = pa.table({
        "clicked": cols["clicked"], "age": pa.array(cols["age"]),  # NaN, not null
        "price": pa.array(cols["price"], mask=cols["price_null"]),  # nulls
        "score": pa.array(cols["score"], from_pandas=True),  # NaN read as null
        "country": pa.array(list(cols["country"]), pa.string()), "city": pa.array(list(cols["city"]), pa.string())})
    pq.write_table(table, path, row_group_size=150)
    return path


def gaps_csv(path: Path, cols: dict) -> Path:
    """The same rows as text, each missing number spelled another way."""
    spellings = ["", "NaN", "nan", "NA", " null ", "None", "N/A"]
    lines = ["clicked,age,price,score,country,city"]
    for i in range(N):
        def number(value, missing, k=i):
            return spellings[k % len(spellings)] if missing else repr(float(value))
        lines.append(",".join([str(cols["clicked"][i]), number(cols["age"][i], np.isnan(cols["age"][i])),
                               number(cols["price"][i], cols["price_null"][i]),
                               number(cols["score"][i], np.isnan(cols["score"][i])),
                               cols["country"][i] or "", cols["city"][i] or ""]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def gaps(tmp_path_factory):
    root = tmp_path_factory.mktemp("gaps")
    (root / "s.yaml").write_text(SCHEMA)
    cols = with_gaps(0)
    prepare([str(gaps_parquet(root / "g.parquet", cols))], load_schema(root / "s.yaml"),
            PrepareOptions(out=root / "pq", split="ratio:80,10,10", progress=False))
    return root, cols


def test_statistics_are_over_present_values_and_missing_entries_take_their_fill(gaps):
    root, cols = gaps
    meta = meta_of(root / "pq")
    train = meta["splits"]["train"][1]
    assert meta["dense_names"] == ["age", "price", "score", "price_missing"] and meta["num_dense"] == 4
    dense = np.fromfile(root / "pq" / "dense.f32", dtype=np.float32).reshape(N, 4)
    age = cols["age"].astype(np.float32).astype(np.float64)
    present = age[:train][~np.isnan(age[:train])]
    stats = meta["dense"][0]["stats"]
    assert stats["mean"] == pytest.approx(present.mean()) and stats["std"] == pytest.approx(present.std())
    assert stats["present"] == present.size and stats["fill"] == 0.0  # fill: mean, standardized: 0
    np.testing.assert_allclose(dense[:, 0], np.where(np.isnan(age), 0.0, (age - present.mean()) / present.std()),
                               rtol=1e-5, atol=1e-5)
    price = np.where(cols["price_null"], np.nan, cols["price"].astype(np.float32))
    np.testing.assert_allclose(dense[:, 1], np.where(np.isnan(price), 0.0, np.log1p(price)), rtol=1e-6)  # fill: zero
    np.testing.assert_array_equal(dense[:, 3], cols["price_null"].astype(np.float32))  # the missing indicator
    score = cols["score"].astype(np.float32).astype(np.float64)
    lo, hi = np.nanmin(score[:train]), np.nanmax(score[:train])
    np.testing.assert_allclose(dense[:, 2], np.where(np.isnan(score), -1.0, (score - lo) / (hi - lo)), atol=1e-6)
    assert meta["missing"] == {"age": int(np.isnan(age).sum()), "price": int(cols["price_null"].sum()),
                               "score": int(np.isnan(score).sum()),
                               "country": sum(c in (None, "") for c in cols["country"]),
                               "city": sum(c is None for c in cols["city"])}


def test_a_missing_category_is_id_zero_or_an_id_of_its_own(gaps):
    root, cols = gaps
    sparse = np.fromfile(root / "pq" / "sparse.i32", dtype=np.int32).reshape(2, N)
    absent = np.array([c in (None, "") for c in cols["country"]])
    assert (sparse[0][absent] == 0).all() and (sparse[0][~absent] > 0).all()  # missing: other -> id 0
    assert hash_text("") not in np.fromfile(root / "pq" / "vocab" / "country.u64", dtype=np.uint64).tolist()
    no_city = np.array([c is None for c in cols["city"]])
    own = np.unique(sparse[1][no_city])  # missing: own_id (the default) -> one id of its own, not 0
    assert own.size == 1 and own[0] > 0 and own[0] not in sparse[1][~no_city]
    tables = {t["name"]: t for t in meta_of(root / "pq")["tables"]}
    assert tables["country"]["out_of_vocabulary"] == 0 and tables["country"]["missing_policy"] == "other"


def test_csv_spellings_of_a_missing_value_give_the_parquet_dataset(gaps, tmp_path):
    root, cols = gaps
    result = cli("data", "prepare", str(gaps_csv(tmp_path / "g.csv", cols)), "--schema", str(root / "s.yaml"),
                 "--split", "ratio:80,10,10", "--out", str(tmp_path / "csv"))
    assert result.returncode == 0, result.stderr
    files = {f: v["sha256"] for f, v in meta_of(tmp_path / "csv")["files"].items()}
    assert files == {f: v["sha256"] for f, v in meta_of(root / "pq")["files"].items()}
    assert f"missing values in age: {int(np.isnan(cols['age']).sum())} of {N} rows -> stored as 0 (fill mean)" \
        in result.stdout
    assert "price_missing = 1" in result.stdout


def test_a_new_day_keeps_the_statistics_fill_and_indicators(gaps, tmp_path):
    root, _ = gaps
    day2 = gaps_parquet(tmp_path / "d2.parquet", with_gaps(1))
    prepare([str(day2)], None, PrepareOptions(out=tmp_path / "d2", vocab_from=str(root / "pq"), progress=False))
    old, new = meta_of(root / "pq"), meta_of(tmp_path / "d2")
    assert [d["stats"] for d in new["dense"][:3]] == [d["stats"] for d in old["dense"][:3]]
    assert new["dense_names"] == old["dense_names"]


def test_a_table_of_dense_columns_only_prepares(tmp_path):
    rng = np.random.default_rng(0)
    rows = [[str(rng.integers(2)), f"{rng.normal():.3f}", "" if i % 4 == 0 else f"{rng.exponential():.3f}"]
            for i in range(300)]
    write_lines(tmp_path / "d.csv", rows, ["y", "a", "b"])
    result = cli("data", "prepare", str(tmp_path / "d.csv"), "--label-column", "y", "--dense-columns", "a,b",
                 "--dense-transform", "standardize", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    meta = meta_of(tmp_path / "out")
    assert meta["tables"] == [] and meta["num_dense"] == 2 and meta["missing"] == {"a": 0, "b": 75}
    assert (tmp_path / "out" / "sparse.i32").stat().st_size == 0
    assert "no categorical columns: the built-in models need at least one embedding table" in result.stdout


def test_the_header_is_decided_per_file(tmp_path):
    rows = avazu_rows(90, 3)
    order = [AVAZU.index(c) for c in reversed(AVAZU)]  # the third file's header has the columns reversed
    files = [write_lines(tmp_path / "a.csv", rows[:30], AVAZU), write_lines(tmp_path / "b.csv", rows[30:60]),
             write_lines(tmp_path / "c.csv", [[r[k] for k in order] for r in rows[60:]], [AVAZU[k] for k in order])]
    whole = write_lines(tmp_path / "whole.csv", rows, AVAZU)
    flags = ["--label-column", "click", "--sparse-columns", ",".join(FEATURES), "--split", "none"]
    for name, inputs in [("parts", files), ("whole", [whole])]:
        result = cli("data", "prepare", *map(str, inputs), *flags, "--out", str(tmp_path / name), "--quiet")
        assert result.returncode == 0, result.stderr
    parts, one = meta_of(tmp_path / "parts"), meta_of(tmp_path / "whole")
    assert [s["header"] for s in parts["sources"]] == [True, False, True] and parts["rows"] == 90
    assert {f: v["sha256"] for f, v in parts["files"].items()} == {f: v["sha256"] for f, v in one["files"].items()}


def test_compressed_input_in_many_pieces_gives_the_plain_files(tmp_path, monkeypatch):
    """The pieces of a compressed file are cut in the pool's feeder thread while results come back; each keeps its
    part number, so the dataset equals the plain file's, for `data prepare` and for its Criteo preset."""
    import time

    from disttrain.prepare import criteo, inputs, tabular_inputs
    from disttrain.prepare.criteo import prepare as prepare_criteo
    from disttrain.prepare.criteo_inputs import PrepOptions
    from tests.criteo_helpers import raw_rows, write_raw

    def slowly(*args):  # pieces come slower than the workers read them
        for piece in inputs.text_pieces(*args):
            time.sleep(0.005)
            yield piece

    monkeypatch.setattr(inputs, "CHUNK_BYTES", 4096)  # ~80 pieces per file
    monkeypatch.setattr(tabular_inputs, "text_pieces", slowly)
    monkeypatch.setattr(criteo, "text_pieces", slowly)

    def digests(meta: dict) -> dict:
        return {f: v["sha256"] for f, v in meta["files"].items()}

    plain = write_lines(tmp_path / "a.csv", avazu_rows(3000, 4), AVAZU)
    packed = tmp_path / "a.csv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    schema = from_flags(label="click", dense="", sparse=",".join(FEATURES), multi_hot="", transform="none",
                        hash_rows=0, min_count=1, delimiter="|", max_length=0, id_order="frequency")
    tables = [prepare([str(p)], schema, PrepareOptions(out=tmp_path / p.name.replace(".", "_"), split="none",
                                                        workers=2, progress=False)) for p in (plain, packed)]
    raws = [write_raw(tmp_path / "r.txt", raw_rows(3000, seed=2)),
            write_raw(tmp_path / "r.txt.gz", raw_rows(3000, seed=2), gz=True)]
    criteo = [prepare_criteo([str(p)], PrepOptions(out=tmp_path / p.name.replace(".", "_"), split="none", workers=2,
                                                   progress=False)) for p in raws]
    for metas in (tables, criteo):
        assert metas[0]["rows"] == 3000 and digests(metas[0]) == digests(metas[1])


@pytest.mark.parametrize(("case", "message"), [
    ("duplicate", "dup.csv:1 (header): column 'site_id' named twice; expected each column name once"),
    ("label", "e.csv:3: column click: label missing, expected 0 or 1"),
    ("fill", "s.yaml: dense.age.fill: got 'median', expected mean, zero or a finite number"),
    ("other", "s.yaml: categorical.city.missing: got 'other' with hash; expected own_id"),
    ("indicator", "dense.age.missing_indicator adds the feature 'age_missing', which is also a column"),
    ("fields", "e2.csv:1: 3 fields, but the header of "),
])
def test_bad_input_is_one_line(tmp_path, case, message):
    schema = {"fill": "label: click\ndense: {age: {fill: median}}\ncategorical: [city]\n",
              "other": "label: click\ncategorical: {city: {hash: 100, missing: other}}\n",
              "indicator": "label: click\ndense: {age: {missing_indicator: true}, age_missing: none}\n"}
    (tmp_path / "s.yaml").write_text(schema.get(case, "label: click\ndense: [age]\ncategorical: [city]\n"))
    header = ["click", "age", "site_id", "site_id"] if case == "duplicate" else ["click", "age", "city", "age_missing"]
    inputs = [write_lines(tmp_path / ("dup.csv" if case == "duplicate" else "e.csv"),
                          [["1", "3", "x", "1"], ["" if case == "label" else "0", "", "y", "0"]], header)]
    if case == "fields":
        inputs.append(write_lines(tmp_path / "e2.csv", [["1", "2", "z"]]))
    result = cli("data", "prepare", *map(str, inputs), "--schema", str(tmp_path / "s.yaml"), "--out",
                 str(tmp_path / "out"), "--quiet")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
