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

Two passes on every core. Pass 1 (`tabular_read`) reads Parquet row groups or CSV byte ranges in worker processes
and hashes every categorical value (`hashing`); the main process appends the results in input order. Pass 2
(`tabular_ids`) maps each feature's keys to ids, one feature per task, and transforms the dense columns with the
training split's statistics. Everything is staged beside the output and renamed into place after meta.json.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from disttrain.config import check_table_count
from disttrain.data.prepared_format import FORMAT
from disttrain.errors import DataError
from disttrain.fileio import sha256_file
from disttrain.prepare.criteo_inputs import compute_splits
from disttrain.prepare.output import (
    Progress,
    abandon,
    allocate,
    commit,
    file_entries,
    open_for_writing,
    phase_seconds,
    staging_dir,
)
from disttrain.prepare.schema import Counters, Schema
from disttrain.prepare.tabular_dense import dense_task
from disttrain.prepare.tabular_ids import check_same_schema, table_task
from disttrain.prepare.tabular_inputs import Input, inspect_inputs, tasks_of
from disttrain.prepare.tabular_read import Chunk, ChunkError, read_task

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
    counters: Counters = field(default_factory=Counters)


def prepare(paths: list[str], schema: Schema | None, opts: PrepareOptions) -> dict:
    """Both passes; returns the metadata written to OUT/meta.json."""
    started = time.perf_counter()
    out = Path(opts.out)
    previous = _vocab_source(opts.vocab_from) if opts.vocab_from else None
    if schema is None:
        if previous is None:
            raise DataError("data prepare: no schema; expected --schema FILE, --label-column with the column flags, "
                            "or --vocab-from DIR (its schema)")
        schema = previous["schema_object"]
    elif previous is not None:
        check_same_schema(schema.to_json(), previous["meta"]["schema"], opts.vocab_from)
    check_table_count(len(schema.categorical), "the schema's categorical columns")  # a table each
    if (out / "meta.json").exists() and not opts.force:
        raise DataError(f"--out {out}: already holds a prepared dataset (remove it or pass --force)")
    if out.exists() and not (out / "meta.json").exists() and any(out.iterdir()):
        raise DataError(f"--out {out}: exists and is not a prepared dataset; choose an empty or new directory")
    inputs = inspect_inputs(paths, schema, opts)
    tmp = staging_dir(out)
    workers = opts.workers or os.cpu_count() or 1
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    try:
        with ctx.Pool(workers) as pool:
            _pass1(pool, inputs, schema, opts, tmp)
            read_seconds = time.perf_counter() - started
            rows = sum(i.rows for i in inputs)
            if rows == 0:
                raise DataError(f"{', '.join(i.path for i in inputs)}: no rows")
            mode = opts.split if opts.split != "auto" else ("ratio:90,5,5" if len(inputs) == 1 else "days")
            splits = compute_splits(mode, [i.rows for i in inputs])
            train_rows = splits["train"][1]
            tables, dense_meta, known = _pass2(pool, tmp, schema, rows, train_rows, previous)
            for t in tables:
                if t["multi_hot"]:
                    t["truncated_rows"] = opts.counters.truncated_rows.get(t["name"], 0)
                    t["truncated_values"] = opts.counters.truncated_values.get(t["name"], 0)
            id_seconds = time.perf_counter() - started - read_seconds
            files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
            rest = [f for f in files if f not in known]  # written in pieces (labels, sparse.i32): read back
            known.update(zip(rest, pool.map(sha256_file, [str(tmp / f) for f in rest])))
            digests = [known[f] for f in files]
        meta = {
            "format": FORMAT, "version": VERSION, "rows": rows, "num_dense": len(schema.dense_names),
            "dense_names": schema.dense_names, "dense": dense_meta, "tables": tables,
            "splits": splits, "schema": schema.to_json(), "missing": missing_counts(dense_meta, tables),
            "options": {"split": mode, "skip_bad_rows": opts.skip_bad_rows, "vocab_from": opts.vocab_from,
                        "hash": "FNV-1a 64 of the value's UTF-8 text; id = hash % rows (raw: the hash as int64)",
                        "missing": "dense: not in the statistics, stored as the column's fill (transformed units); "
                                   "categorical: the empty text (own_id) or id 0 (other); multi-hot: an empty bag"},
            "sources": [i.to_json() for i in inputs],
            "files": file_entries(tmp, files, digests),
            "seconds": phase_seconds(started, read=read_seconds, ids=id_seconds),
        }
        commit(tmp, out, meta)
        if opts.progress:
            print_missing(meta)
            if not tables:
                print("  no categorical columns: the built-in models need at least one embedding table to train")
        return meta
    except BaseException as exc:
        failure = abandon(tmp, out, exc, input_bytes=sum(i.bytes for i in inputs))
        if failure is None:
            raise
        raise failure from None


def read_to_parts(item) -> tuple[Chunk, int]:
    """Worker: read one task and write its arrays to part files, which the main process appends in input order;
    hands back the chunk without its arrays (nothing large crosses the process boundary)."""
    index, task, folder = item
    chunk, nbytes = read_task(task)
    base = f"{folder}/{index:07d}"
    chunk.labels.tofile(f"{base}.labels")
    np.ascontiguousarray(chunk.dense, dtype="<f4").tofile(f"{base}.dense")
    singles = [c.name for c in task.schema.categorical if not c.multi_hot]
    multis = [c.name for c in task.schema.categorical if c.multi_hot]
    for name, keys in zip(singles, chunk.single):
        keys.tofile(f"{base}.keys_{name}")
    for name, (lengths, keys) in zip(multis, chunk.multi):
        lengths.tofile(f"{base}.len_{name}")
        keys.tofile(f"{base}.keys_{name}")
    return replace(chunk, labels=chunk.labels[:0], dense=chunk.dense[:0], single=[], multi=[],
                   stored_rows=chunk.labels.size), nbytes


def _append(target, part: str) -> None:
    """Append a part file to an open output file (in the kernel where it can) and remove the part."""
    with open(part, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        target.flush()
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(src.fileno(), target.fileno(), size - copied)
                if n == 0:
                    break
                copied += n
        except (AttributeError, OSError):
            src.seek(copied)
            shutil.copyfileobj(src, target)
    os.unlink(part)


def _pass1(pool, inputs: list[Input], schema: Schema, opts: PrepareOptions, tmp: Path) -> None:
    progress = Progress(opts.progress, sum(i.bytes for i in inputs), label="read")
    names = {"labels": "labels.u8", "dense": "dense.raw.f32"}
    for c in schema.categorical:
        names["keys_" + c.name] = f"keys_{c.name}.u64"
        if c.multi_hot:
            names["len_" + c.name] = f"len_{c.name}.i32"
    parts = tmp / "parts"
    parts.mkdir()
    first = 0  # part number of the source's first task
    try:
        with open_for_writing([tmp / name for name in names.values()]) as opened:
            files = dict(zip(names, opened))
            for source in inputs:
                try:
                    tasks = tasks_of(source, schema, opts.skip_bad_rows)
                    work = ((first + i, task, str(parts)) for i, task in enumerate(tasks))
                    for index, (chunk, nbytes) in enumerate(pool.imap(read_to_parts, work), start=first):
                        for suffix, target in files.items():  # imap hands the results back in input order
                            _append(target, f"{parts}/{index:07d}.{suffix}")
                        first = index + 1
                        source.add(chunk)
                        opts.counters.add(chunk.counters)
                        progress.update(nbytes or source.bytes_per_task, chunk.rows)
                except ChunkError as exc:
                    raise DataError(f"{source.where(exc.row)}: {exc.reason}" + (
                        " (--skip-bad-rows skips and counts such rows)" if exc.row >= 0 else "")) from None
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    progress.update(0, 0, force=True)
    progress.finish()


def _pass2(pool, tmp: Path, schema: Schema, rows: int, train_rows: int, previous: dict | None):
    allocate(tmp / "sparse.i32", 4 * rows * sum(not c.multi_hot and not c.raw for c in schema.categorical))
    old_tables = {t["name"]: t for t in previous["meta"]["tables"]} if previous else {}
    tasks, slot = [], 0
    for c in schema.categorical:
        vocab = (str(Path(previous["path"]) / "vocab" / f"{c.name}.u64")
                 if previous and old_tables[c.name]["mode"] == "vocabulary" else None)
        tasks.append({"tmp": str(tmp), "rows": rows, "train_rows": train_rows, "id_order": schema.id_order,
                      "slot": slot, "vocab": vocab,
                      "feature": {"name": c.name, "multi_hot": c.multi_hot, "pooling": c.pooling, "hash": c.hash_rows,
                                  "raw": c.raw, "min_count": c.min_count, "max_length": c.max_length,
                                  "missing": c.missing}})
        slot += not c.multi_hot and not c.raw
    given = [d["stats"] for d in previous["meta"]["dense"] if "stats" in d] if previous else None
    features = [d.to_json() for d in schema.dense]
    dense = pool.apply_async(dense_task, (str(tmp), rows, train_rows, features, given))
    done = {t["name"]: t for t in pool.imap_unordered(table_task, tasks)}  # beside the dense columns
    tables = [done[c.name] for c in schema.categorical]
    stats, missing, dense_digests = dense.get()
    digests = dict(dense_digests)
    for t in tables:
        digests.update(t.pop("sha256", {}))
    for p in [tmp / "dense.raw.f32", *tmp.glob("keys_*.u64"), *tmp.glob("len_*.i32")]:
        p.unlink()
    dense_meta = [{**d.to_json(), "stats": s, "missing": m} for d, s, m in zip(schema.dense, stats, missing)]
    dense_meta += [{"name": d.indicator, "transform": "missing_indicator", "of": d.name} for d in schema.dense
                   if d.missing_indicator]
    return tables, dense_meta, digests


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
