"""`disttrain data criteo`: raw Criteo logs -> a directory of memory-mappable columns.

Output directory (all little-endian, no headers; shapes and splits in `meta.json`):

    labels.u8     [rows]               click labels
    dense.f32     [rows, num_dense]    log(1 + max(x, 0)) of the integer features
    sparse.i32    [num_sparse, rows]   one contiguous id column per table (column-major)
    vocab/C<k>.u32                     raw hash of each id (id 0 is the reserved default in vocabulary mode
                                       with --id-order frequency)
    meta.json                          rows, tables, splits, options, sources, sha256 of every file

Two passes, both on every core. Pass 1 parses byte ranges of the inputs in worker processes (`criteo_parse`) while
the main process appends the results in input order. Pass 2 takes one table per task: sort the table's raw hashes
once, count them, build the vocabulary (most frequent first; or, as the reference numbers them, in order of first
appearance over all rows with `--id-order first-seen`; or the reference's own dictionaries), then write the ids. Everything goes to a hidden `.tmp-` sibling that is
renamed into place after `meta.json` is written, so an interrupted run never leaves a directory that looks
complete.
"""

from __future__ import annotations

import gzip
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from disttrain.config import check_table_count
from disttrain.data.prepared_format import FORMAT, FORMAT_VERSION
from disttrain.errors import DataError
from disttrain.fileio import sha256_file
from disttrain.prepare.criteo_inputs import (
    PrepOptions,
    Source,
    byte_ranges,
    compute_splits,
    is_gzip,
    open_raw,
    resolve_layout,
)
from disttrain.prepare.criteo_parse import (
    NUM_SPARSE,
    SPARSE_NAMES,
    BadRow,
    Layout,
    Parsed,
    ParseError,
    parse_block,
)
from disttrain.prepare.output import (
    Progress,
    abandon,
    allocate,
    commit,
    file_entries,
    is_write_failure,
    open_for_writing,
    phase_seconds,
    staging_dir,
)
from disttrain.prepare.reference_dicts import dict_files, load_dict

ID_ORDERS = ("frequency", "first-seen")
CHUNK_BYTES = 16 << 20  # one task of pass 1
BLOCK_BYTES = 2 << 20  # one parse_block call: small enough that its temporaries stay in cache


def _parse_task(task) -> tuple[Parsed, int]:
    """Worker: parse one range (a file slice, or bytes handed over for compressed input)."""
    kind, payload, layout, skip_bad_rows = task
    if kind == "range":
        path, start, stop = payload
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(stop - start)
    else:
        data = payload
    parsed = _parse_bytes(data, layout, skip_bad_rows)
    parsed.sparse = np.ascontiguousarray(parsed.sparse.T)  # column-major: the main process appends per table
    return parsed, len(data)


def _parse_bytes(data: bytes, layout: Layout, skip_bad_rows: bool) -> Parsed:
    parts: list[Parsed] = []
    lines = 0
    pos = 0
    while pos < len(data):
        end = data.rfind(b"\n", pos, pos + BLOCK_BYTES) + 1 if pos + BLOCK_BYTES < len(data) else len(data)
        if end <= pos:  # a line longer than a block
            end = data.find(b"\n", pos + BLOCK_BYTES) + 1 or len(data)
        try:
            part = parse_block(data[pos:end], layout, skip_bad_rows=skip_bad_rows)
        except ParseError as exc:
            raise ParseError(BadRow(exc.bad.line + lines, exc.bad.reason)) from None
        for b in part.bad:
            b.line += lines
        lines += part.lines
        parts.append(part)
        pos = end
    if not parts:
        return Parsed(np.zeros(0, np.uint8), np.zeros((0, len(layout.dense)), np.float32),
                      np.zeros((0, len(layout.sparse)), np.uint32), 0)
    return Parsed(
        labels=np.concatenate([p.labels for p in parts]),
        dense=np.concatenate([p.dense for p in parts]),
        sparse=np.concatenate([p.sparse for p in parts]),
        lines=lines,
        bad=[b for p in parts for b in p.bad],
        bad_count=sum(p.bad_count for p in parts),
    )


def _tasks(source: Source, skip_bad_rows: bool) -> Iterator[tuple]:
    if not source.compressed:
        start = 0
        if source.header_lines:
            with open(source.path, "rb") as f:
                f.readline()
                start = f.tell()
        for a, b in byte_ranges(source.path, start, source.bytes, CHUNK_BYTES):
            yield ("range", (str(source.path), a, b), source.layout, skip_bad_rows)
        return
    with open_raw(source.path) as f:
        if source.header_lines:
            f.readline()
        rest = b""
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            rest = data[cut:]
            yield ("bytes", data[:cut], source.layout, skip_bad_rows)
        if rest:
            yield ("bytes", rest, source.layout, skip_bad_rows)


# ---------------------------------------------------------------------------------------------------------------
# Pass 2: ids per table
# ---------------------------------------------------------------------------------------------------------------

GROUP_ROWS = 1 << 26  # rows sorted at once in pass 2 (row numbers are packed into 32 bits)


def _group(values: np.ndarray):
    """Sort once: distinct values, for each sorted position its row and its distinct value's index, and each
    distinct value's first row."""
    n = values.size
    packed = (values.astype(np.uint64) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    packed.sort()
    sorted_values = (packed >> np.uint64(32)).astype(np.uint32)
    rows = (packed & np.uint64(0xFFFFFFFF)).astype(np.int64)
    del packed
    new = np.empty(n, dtype=bool)
    new[:1] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=new[1:])
    group = np.cumsum(new) - 1
    return sorted_values[new], group, rows, rows[new]


def _vocabulary(merged, total, first, threshold: int, hash_rows: int, id_order: str, dictionary):
    """(values in id order, ids reserved before them) for one table."""
    if dictionary is not None:  # the reference's own dictionary: its ids, exactly
        return dictionary, 0
    if id_order == "first-seen":  # the reference's numbering: every value, in order of first appearance
        return merged[np.argsort(first, kind="stable")], 0
    if hash_rows:  # the distinct hashed values, in sorted order
        return merged[total > 0], 0
    # values seen at least `threshold` times in training, most frequent first; 0 = everything else
    keep = total >= max(threshold, 1)
    return merged[keep][np.lexsort((merged[keep], -total[keep]))], 1


def _table_task(task) -> dict:
    """Worker: one table's vocabulary (or hash ids) and its id column in sparse.i32."""
    tmp, t, name, rows, train_rows, threshold, hash_rows, id_order, dict_file = task
    tmp = Path(tmp)
    raw = np.memmap(tmp / f"raw_{t}.u32", dtype=np.uint32, mode="r", shape=(rows,))
    out = np.memmap(tmp / "sparse.i32", dtype=np.int32, mode="r+", offset=4 * t * rows, shape=(rows,))
    # Count every distinct value: over the training rows (vocabulary) or over all rows (hashing, first-seen).
    counted = rows if hash_rows or id_order == "first-seen" else train_rows

    def grouped(lo: int, hi: int):
        values = np.asarray(raw[lo:hi])
        return _group(values % np.uint32(hash_rows) if hash_rows else values)

    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    firsts: list[np.ndarray] = []
    cache = None
    for lo in range(0, rows, GROUP_ROWS):
        uniq, group, order, first = grouped(lo, min(rows, lo + GROUP_ROWS))
        in_count = order < (counted - lo)
        keys.append(uniq)
        counts.append(np.bincount(group[in_count], minlength=uniq.size))
        firsts.append(first + lo)
        if rows <= GROUP_ROWS:
            cache = (uniq, group, order, first)
    if len(keys) == 1:
        merged, total, first = keys[0], counts[0], firsts[0]
    else:
        merged, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        total = np.bincount(inverse, weights=np.concatenate(counts), minlength=merged.size).astype(np.int64)
        first = np.full(merged.size, np.iinfo(np.int64).max)
        np.minimum.at(first, inverse, np.concatenate(firsts))
    dictionary = load_dict(Path(dict_file)) if dict_file else None
    vocab, reserved = _vocabulary(merged, total, first, threshold, hash_rows, id_order, dictionary)
    # Lookup: sorted keys -> ids.
    lookup_keys_order = np.argsort(vocab, kind="stable")
    lookup_keys = vocab[lookup_keys_order]
    lookup_ids = (lookup_keys_order + reserved).astype(np.int32)
    unseen = 0
    for lo in range(0, rows, GROUP_ROWS):
        hi = min(rows, lo + GROUP_ROWS)
        uniq, group, order, _ = cache if cache is not None else grouped(lo, hi)
        pos = np.searchsorted(lookup_keys, uniq)
        pos_c = np.minimum(pos, max(lookup_keys.size - 1, 0))
        found = (pos < lookup_keys.size) & (lookup_keys[pos_c] == uniq) if lookup_keys.size else np.zeros(uniq.size, bool)
        ids_of_uniq = np.where(found, lookup_ids[pos_c] if lookup_keys.size else 0, 0).astype(np.int32)
        unseen += int(np.count_nonzero(~found[group]))
        block = np.empty(hi - lo, dtype=np.int32)
        block[order] = ids_of_uniq[group]
        out[lo:hi] = block
    out.flush()
    (tmp / "vocab").mkdir(exist_ok=True)
    vocab.astype(np.uint32).tofile(tmp / "vocab" / f"{name}.u32")
    info = {"name": name, "rows": int(vocab.size + reserved), "distinct_train": int((total > 0).sum()),
            "reserved_default": bool(reserved)}
    if dictionary is not None:
        info["unseen_rows"] = unseen  # values the reference's dictionary lacks: id 0
    return info


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------


def prepare(raw_paths: list[str], opts: PrepOptions) -> dict:
    """Run both passes; returns the metadata written to OUT/meta.json."""
    started = time.perf_counter()
    if not raw_paths:
        raise DataError("disttrain data criteo: no input files given")
    if opts.vocab_threshold < 1:
        raise DataError(f"--vocab-threshold: got {opts.vocab_threshold}, expected 1 or more")
    if opts.hash_rows < 0 or opts.hash_rows > 2**31 - 1:
        raise DataError(f"--hash-rows: got {opts.hash_rows}, expected 0 (vocabulary) or 1..2147483647")
    if opts.id_order not in ID_ORDERS:
        raise DataError(f"--id-order: got {opts.id_order!r}, expected one of {', '.join(ID_ORDERS)}")
    if opts.vocab_threshold != 1 and (opts.id_order == "first-seen" or opts.vocab_dicts):
        raise DataError(f"--vocab-threshold: got {opts.vocab_threshold}, expected 1 with "
                        f"{'--vocab-dicts' if opts.vocab_dicts else '--id-order first-seen'} (the reference numbers "
                        "every value)")
    out = Path(opts.out)
    if (out / "meta.json").exists() and not opts.force:
        raise DataError(f"--out {out}: already holds a processed dataset (remove it or pass --force)")
    if out.exists() and not (out / "meta.json").exists() and any(out.iterdir()):
        raise DataError(f"--out {out}: exists and is not a processed dataset; choose an empty or new directory")
    sources = []
    for p in raw_paths:
        path = Path(p)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        layout, header = resolve_layout(path, opts)
        sources.append(Source(path, layout, header, path.stat().st_size, is_gzip(path)))
    first = sources[0].layout
    for s in sources[1:]:
        if (len(s.layout.dense), len(s.layout.sparse)) != (len(first.dense), len(first.sparse)):
            raise DataError(f"{s.path}: {len(s.layout.dense)} dense and {len(s.layout.sparse)} categorical columns, "
                            f"but {sources[0].path} has {len(first.dense)} and {len(first.sparse)}")
    num_dense, num_sparse = len(first.dense), len(first.sparse)
    check_table_count(num_sparse, f"{sources[0].path}: categorical columns")  # a table each
    dicts = dict_files(opts.vocab_dicts, num_sparse) if opts.vocab_dicts else [""] * num_sparse
    for f in dicts:  # checked before the long parse (the table workers read them again)
        if f:
            load_dict(f)
    sparse_names = [SPARSE_NAMES[i] if i < NUM_SPARSE else f"C{i + 1}" for i in range(num_sparse)]
    tmp = staging_dir(out)
    workers = opts.workers or os.cpu_count() or 1
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    try:
        progress = Progress(opts.progress, sum(s.bytes for s in sources))
        with ctx.Pool(workers) as pool:
            raw_names = [tmp / f"raw_{t}.u32" for t in range(num_sparse)]
            with open_for_writing([tmp / "labels.u8", tmp / "dense.f32", *raw_names]) as (f_labels, f_dense, *raw_files):
                for source in sources:
                    _parse_source(pool, source, opts, f_labels, f_dense, raw_files, progress)
            progress.update(0, 0, force=True)
            progress.finish()
            parse_seconds = time.perf_counter() - started
            rows = sum(s.rows for s in sources)
            if rows == 0:
                raise DataError(f"{', '.join(str(s.path) for s in sources)}: no rows")
            splits = compute_splits(opts.split, [s.rows for s in sources])
            train_rows = splits["train"][1]
            allocate(tmp / "sparse.i32", 4 * rows * num_sparse)
            table_tasks = [(str(tmp), t, sparse_names[t], rows, train_rows, opts.vocab_threshold, opts.hash_rows,
                            opts.id_order, str(dicts[t])) for t in range(num_sparse)]
            tables = list(pool.imap_unordered(_table_task, table_tasks))
            tables.sort(key=lambda d: sparse_names.index(d["name"]))
            for t in range(num_sparse):
                os.unlink(tmp / f"raw_{t}.u32")
            map_seconds = time.perf_counter() - started - parse_seconds
            files = ["labels.u8", "dense.f32", "sparse.i32"] + [f"vocab/{n}.u32" for n in sparse_names]
            digests = pool.map(sha256_file, [str(tmp / f) for f in files])
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "rows": rows,
            "num_dense": num_dense,
            "dense_names": [first.names[c] for c in first.dense],
            "tables": tables,
            "splits": splits,
            "options": {
                "mode": "hash" if opts.hash_rows else "vocabulary",
                "vocab_threshold": opts.vocab_threshold,
                "hash_rows": opts.hash_rows,
                "id_order": "reference dictionaries" if opts.vocab_dicts else opts.id_order,
                "vocab_dicts": str(Path(opts.vocab_dicts).resolve()) if opts.vocab_dicts else "",
                "split": opts.split,
                "skip_bad_rows": opts.skip_bad_rows,
                "dense_transform": "log(1 + max(x, 0))",
                "missing": "empty integer -> 0; empty categorical -> hash 0",
            },
            "sources": [
                {"path": str(s.path.resolve()), "bytes": s.bytes, "compressed": s.compressed, "lines": s.lines,
                 "rows": s.rows, "bad_rows": s.bad_rows, "bad_examples": s.bad_examples, "header": bool(s.header_lines),
                 "layout": s.layout.to_json()}
                for s in sources
            ],
            "files": file_entries(tmp, files, digests),
            "seconds": phase_seconds(started, parse=parse_seconds, ids=map_seconds),
        }
        commit(tmp, out, meta)
        return meta
    except BaseException as exc:
        failure = abandon(tmp, out, exc, input_bytes=sum(s.bytes for s in sources))
        if failure is None:
            raise
        raise failure from None


def _parse_source(pool, source: Source, opts: PrepOptions, f_labels, f_dense, raw_files, progress) -> None:
    """Pass 1 for one input: workers parse its chunks, results are appended here in input order."""
    line_base = source.header_lines
    try:
        for parsed, nbytes in pool.imap(_parse_task, _tasks(source, opts.skip_bad_rows)):
            for b in parsed.bad:
                if len(source.bad_examples) < 5:
                    source.bad_examples.append(f"{source.path}:{line_base + b.line}: {b.reason}")
            source.bad_rows += parsed.bad_count
            line_base += parsed.lines
            source.lines += parsed.lines
            source.rows += parsed.labels.size
            f_labels.write(memoryview(parsed.labels))
            f_dense.write(memoryview(np.ascontiguousarray(parsed.dense, dtype="<f4")))
            for t, f in enumerate(raw_files):  # parsed.sparse is [tables, rows] here
                f.write(memoryview(parsed.sparse[t]))
            progress.update(nbytes, parsed.labels.size)
    except ParseError as exc:
        raise DataError(f"{source.path}:{line_base + exc.bad.line}: {exc.bad.reason} "
                        "(--skip-bad-rows skips and counts such rows)") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        if is_write_failure(exc, Path(f_labels.name).parent):
            raise  # writing the output failed, not reading the input: prepare() says so
        raise DataError(f"{source.path}: read failed after line {line_base} ({exc})") from None
