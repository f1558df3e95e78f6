"""`disttrain data prepare`: Parquet or CSV/TSV files of any schema -> a directory of memory-mappable columns that
`data.source=prepared` trains on.

Output (little-endian, no headers; `meta.json` holds the schema, shapes, splits, statistics and checksums):

    labels.u8                        [rows]
    dense.f32                        [rows, dense features], transformed
    sparse.i32                       [single-hot features, rows], one contiguous id column per feature
    multi/<name>.offsets.i64         [rows + 1] per multi-hot feature: row r's ids are values[offsets[r]:offsets[r+1]]
    multi/<name>.values.i32          its ids (.i64: a raw feature's)
    raw/<name>.i64                   raw single-hot features (`raw: true`): the value's 64-bit hash as the id
    vocab/<name>.u64                 vocabulary features: the 64-bit key of id 1, 2, ... (id 0 = out of vocabulary)

The two passes are `pipeline`'s, the driver `data criteo` (a preset of this) runs too. Pass 1 (`tabular_inputs`,
`tabular_read`) reads Parquet row groups or CSV byte ranges in worker processes and hashes every categorical value
(`hashing`); the main process appends the results in input order. Pass 2 (`tabular_ids`) maps each feature's keys
to ids, one feature per task, and (`tabular_dense`) transforms the dense columns with the training split's
statistics. Everything is staged beside the output and renamed into place after meta.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from disttrain.config import check_table_count
from disttrain.data.prepared_format import FORMAT
from disttrain.errors import DataError
from disttrain.prepare.inputs import Input
from disttrain.prepare.output import check_target
from disttrain.prepare.pipeline import Job, run
from disttrain.prepare.schema import Counters, Schema
from disttrain.prepare.tabular_dense import dense_task
from disttrain.prepare.tabular_ids import check_same_schema, table_task
from disttrain.prepare.tabular_inputs import inspect_inputs, tasks_of

VERSION = 2  # meta.json "version" of a prepared directory (1: `disttrain data criteo` before multi-hot)


@dataclass
class PrepareOptions:
    out: Path
    split: str = "auto"
    header: str = "auto"
    delimiter: str = "auto"
    column_names: str = ""
    vocab_from: str = ""
    skip_bad_rows: bool = False
    workers: int = 0
    force: bool = False
    progress: bool = True
    counters: Counters = field(default_factory=Counters)  # what the run counted (multi-hot rows cut)


def prepare(paths: list[str], schema: Schema | None, opts: PrepareOptions) -> dict:
    """Both passes; returns the metadata written to OUT/meta.json."""
    started = time.perf_counter()
    previous = _vocab_source(opts.vocab_from) if opts.vocab_from else None
    if schema is None:
        if previous is None:
            raise DataError("data prepare: no schema; expected --schema FILE, --label-column with the column flags, "
                            "or --vocab-from DIR (its schema)")
        schema = previous["schema_object"]
    elif previous is not None:
        check_same_schema(schema.to_json(), previous["meta"]["schema"], opts.vocab_from)
    check_table_count(len(schema.categorical), "the schema's categorical columns")  # a table each
    check_target(Path(opts.out), opts.force, "prepared")
    inputs = inspect_inputs(paths, schema, opts)
    meta = run(TableJob(schema, inputs, opts, previous), started)
    if opts.progress:
        print_missing(meta)
        if not meta["tables"]:
            print("  no categorical columns: the built-in models need at least one embedding table to train")
    return meta


class TableJob(Job):
    """`data prepare`: any schema, Parquet or CSV read by Arrow, 64-bit keys numbered by the schema."""

    number = staticmethod(table_task)

    def __init__(self, schema: Schema, inputs: list[Input], opts: PrepareOptions, previous: dict | None):
        split = opts.split if opts.split != "auto" else ("ratio:90,5,5" if len(inputs) == 1 else "days")
        super().__init__(opts.out, schema, inputs, split=split, workers=opts.workers, progress=opts.progress)
        self.opts, self.previous, self.counters = opts, previous, opts.counters

    def tasks(self, source: Input):
        return tasks_of(source, self.schema, self.opts.skip_bad_rows)

    def id_tasks(self, tmp: Path, rows: int, train_rows: int) -> list[dict]:
        previous = self.previous
        old_tables = {t["name"]: t for t in previous["meta"]["tables"]} if previous else {}
        tasks, slot = [], 0
        for c in self.schema.categorical:
            vocab = (str(Path(previous["path"]) / "vocab" / f"{c.name}.u64")
                     if previous and old_tables[c.name]["mode"] == "vocabulary" else None)
            tasks.append({"tmp": str(tmp), "rows": rows, "train_rows": train_rows, "id_order": self.schema.id_order,
                          "slot": slot, "vocab": vocab,
                          "feature": {"name": c.name, "multi_hot": c.multi_hot, "pooling": c.pooling,
                                      "hash": c.hash_rows, "raw": c.raw, "min_count": c.min_count,
                                      "max_length": c.max_length, "missing": c.missing}})
            slot += not c.multi_hot and not c.raw
        return tasks

    def dense(self, pool, tmp: Path, rows: int, train_rows: int):
        given = [d["stats"] for d in self.previous["meta"]["dense"] if "stats" in d] if self.previous else None
        features = [d.to_json() for d in self.schema.dense]
        return pool.apply_async(dense_task, (str(tmp), rows, train_rows, features, given))

    def meta(self, rows: int, splits: dict, tables: list[dict], dense) -> dict:
        schema, opts, counters = self.schema, self.opts, self.counters
        for t in tables:
            if t["multi_hot"]:
                t["truncated_rows"] = counters.truncated_rows.get(t["name"], 0)
                t["truncated_values"] = counters.truncated_values.get(t["name"], 0)
        stats, missing, _ = dense
        dense_meta = [{**d.to_json(), "stats": s, "missing": m} for d, s, m in zip(schema.dense, stats, missing)]
        dense_meta += [{"name": d.indicator, "transform": "missing_indicator", "of": d.name} for d in schema.dense
                       if d.missing_indicator]
        return {
            "format": FORMAT, "version": VERSION, "rows": rows, "num_dense": len(schema.dense_names),
            "dense_names": schema.dense_names, "dense": dense_meta, "tables": tables,
            "splits": splits, "schema": schema.to_json(), "missing": missing_counts(dense_meta, tables),
            "options": {"split": self.split, "skip_bad_rows": opts.skip_bad_rows, "vocab_from": opts.vocab_from,
                        "hash": "FNV-1a 64 of the value's UTF-8 text; id = hash % rows (raw: the hash as int64)",
                        "missing": "dense: not in the statistics, stored as the column's fill (transformed units); "
                                   "categorical: the empty text (own_id) or id 0 (other); multi-hot: an empty bag"},
            "sources": [i.to_json() for i in self.inputs],
        }


def missing_counts(dense_meta: list[dict], tables: list[dict]) -> dict[str, int]:
    """meta.json's "missing": rows without a value, per feature column (multi-hot: rows with an empty bag)."""
    return {**{d["name"]: d["missing"] for d in dense_meta if "missing" in d},
            **{t["name"]: t["missing"] for t in tables}}


def print_missing(meta: dict) -> None:
    """The missing values per column, and what each became."""
    counts = {k: v for k, v in meta["missing"].items() if v}
    if not counts:
        print("  missing values: none")
        return
    dense = {d["name"]: d for d in meta["dense"]}
    tables = {t["name"]: t for t in meta["tables"]}
    for name, count in counts.items():
        if name in dense:
            d = dense[name]
            became = f"stored as {d['stats']['fill']:.6g} (fill {d['fill']})" + (
                f", {name}_missing = 1" if d["missing_indicator"] else "")
        else:
            t = tables[name]
            became = ("empty bags" if t["multi_hot"] else "id 0 (missing: other)" if t["missing_policy"] == "other"
                      else "the empty value's own id (missing: own_id)")
        print(f"  missing values in {name}: {count:,} of {meta['rows']:,} rows -> {became}")


def _vocab_source(path: str) -> dict:
    """An earlier prepared directory whose vocabularies and statistics a new day reuses."""
    from disttrain.prepare.schema import load_schema_json

    meta_path = Path(path) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"--vocab-from {path}: no readable meta.json ({exc}); expected a `disttrain data prepare` "
                        "output") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION or "schema" not in meta:
        raise DataError(f"--vocab-from {path}: not a `disttrain data prepare` output (format "
                        f"{meta.get('format')!r} version {meta.get('version')!r})")
    return {"path": path, "meta": meta, "schema_object": load_schema_json(meta["schema"], str(meta_path))}
