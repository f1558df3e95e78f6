"""Pass 1 of `disttrain data prepare`: one chunk of input (a Parquet row group, or a CSV/TSV byte range) -> the
label, the raw dense values and the 64-bit keys of every categorical feature, in row order.

Runs in worker processes; everything returned is numpy. CSV fields are read as text and converted here, so a bad
field is reported with its file line (or skipped and counted with --skip-bad-rows) instead of failing the whole
chunk. Parquet columns keep their types: numbers stay numbers, `list<...>` columns are multi-hot.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from disttrain.prepare.hashing import EMPTY, arrow, hash_values, numpy_of
from disttrain.prepare.inputs import Piece
from disttrain.prepare.pipeline import Chunk, ChunkError
from disttrain.prepare.schema import Counters, Schema


@dataclass(frozen=True)
class Task:
    kind: str  # "parquet" | "csv"
    path: str
    schema: Schema
    skip_bad_rows: bool
    row_group: int = 0
    piece: Piece | None = None  # CSV: the part of the file
    names: tuple[str, ...] = ()  # CSV: every column's name, in file order
    delimiter: str = ","

    def read(self) -> tuple[Chunk, int]:
        return read_task(self)


def read_task(task: Task) -> tuple[Chunk, int]:
    """Worker: (the chunk, bytes of input it covered)."""
    if task.kind == "parquet":
        footer = pq.ParquetFile(task.path).metadata  # read once, for the text columns and the reading
        table = pq.ParquetFile(task.path, metadata=footer, read_dictionary=_text_leaves(footer, task.schema)) \
            .read_row_group(task.row_group, columns=task.schema.columns, use_threads=False)  # a process per core
        return convert(table, task.schema, task.skip_bad_rows, lines=table.num_rows, line_of=None), 0
    data = task.piece.data()
    return read_csv_bytes(data, task), len(data)


def _text_leaves(footer: pq.FileMetaData, schema: Schema) -> list[str]:
    """The Parquet leaf columns of text categorical features (single or in lists): read as dictionaries, straight
    from the file's dictionary pages, so each distinct text is decoded and hashed once per row group."""
    categorical = {c.name for c in schema.categorical}
    layout = footer.schema
    leaves = []
    for i in range(len(layout)):
        column = layout.column(i)
        if column.path.split(".")[0] in categorical and column.physical_type == "BYTE_ARRAY":
            leaves.append(column.path)
    return leaves


def read_csv_bytes(data: bytes, task: Task) -> Chunk:
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    skipped: list[tuple[int, str]] = []

    def invalid(row) -> str:
        line = (row.number - 1) if row.number is not None else -1
        skipped.append((line, f"{row.actual_columns} fields, expected {row.expected_columns}"))
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=list(task.names), use_threads=False, block_size=1 << 26),
            parse_options=pacsv.ParseOptions(delimiter=task.delimiter, newlines_in_values=False,
                                             ignore_empty_lines=False, invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in task.names},
                                                 include_columns=task.schema.columns, strings_can_be_null=False,
                                                 quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise ChunkError(-1, f"not readable as {task.delimiter!r}-separated text ({exc})") from None
    if skipped and not task.skip_bad_rows:
        line, reason = skipped[0]
        raise ChunkError(line, reason)
    kept = np.setdiff1d(np.arange(lines), [s[0] for s in skipped]) if skipped else None
    chunk = convert(table, task.schema, task.skip_bad_rows, lines=lines,
                    line_of=(lambda i: int(kept[i])) if kept is not None else None)
    chunk.bad = skipped[:5] + chunk.bad
    chunk.bad_count += len(skipped)
    return chunk


def convert(table: pa.Table, schema: Schema, skip_bad_rows: bool, *, lines: int, line_of) -> Chunk:
    """Typed arrays of one chunk; rows with a bad field raise ChunkError (or are dropped and counted)."""
    n = table.num_rows
    line = line_of or (lambda i: i)
    bad_rows = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}

    def fail(mask: np.ndarray, reason) -> None:
        rows = np.flatnonzero(mask & ~bad_rows)
        if rows.size == 0:
            return
        if not skip_bad_rows:
            raise ChunkError(line(int(rows[0])), reason(int(rows[0])))
        bad_rows[rows] = True
        for r in rows[:5]:
            reasons.setdefault(int(r), reason(int(r)))

    labels = _numbers(table.column(schema.label), schema.label, fail)
    fail(~np.isin(labels, (0.0, 1.0)), lambda r: f"column {schema.label}: label "
                                                 f"{'missing' if np.isnan(labels[r]) else _text(table, schema.label, r)}"
                                                 ", expected 0 or 1")
    dense = np.zeros((n, len(schema.dense)), dtype=np.float32)  # NaN: missing
    for j, feature in enumerate(schema.dense):
        dense[:, j] = _numbers(table.column(feature.name), feature.name, fail)
    single, multi, counters = [], [], Counters()
    for feature in schema.categorical:
        column = table.column(feature.name)
        if not feature.multi_hot:
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                raise ChunkError(-1, f"column {feature.name}: a list column ({column.type}); expected "
                                     "multi_hot for it in the schema")
            single.append(hash_values(column))
            continue
        lengths, values, overflow = _lists(column, feature)
        if overflow is not None and feature.overflow == "error":
            fail(overflow > 0, lambda r, f=feature, o=overflow, ln=lengths: (
                f"column {f.name}: {int(ln[r] + o[r])} values, more than max_length {f.max_length} (the "
                "schema's overflow: error; truncate cuts and counts)"))
        elif overflow is not None:
            counters.truncated_rows[feature.name] = int((overflow > 0).sum())
            counters.truncated_values[feature.name] = int(overflow.sum())
        multi.append((lengths, hash_values(values)))
    keep = ~bad_rows
    if bad_rows.any():
        single = [s[keep] for s in single]
        multi = [_keep_lists(lengths, keys, keep) for lengths, keys in multi]
    bad = [(line(r), reasons[r]) for r in sorted(reasons)[:5]]
    return Chunk(labels[keep].astype(np.uint8), dense[keep], single, multi, lines, bad, int(bad_rows.sum()), counters)


def _text(table: pa.Table, column: str, row: int) -> str:
    return repr(table.column(column)[row].as_py())


MISSING_TEXT = r"^(?i:nan|na|n/a|null|none)?$"  # after trimming: a missing number in a text column (RE2)


def _numbers(column: pa.ChunkedArray, name: str, fail) -> np.ndarray:
    """float64 values, NaN where missing (a null, a NaN, or text that is empty, NaN, NA, N/A, null or None in any
    case); text that is not a number, and an infinity, are bad rows."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_boolean(array.type):
        array = pc.cast(array, pa.int8())
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        stripped = pc.utf8_trim_whitespace(array)
        missing = pc.match_substring_regex(stripped, MISSING_TEXT)
        try:
            values = pc.cast(pc.if_else(missing, pa.nulls(1, array.type)[0], stripped), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _numbers_one_by_one(stripped.to_pylist(), numpy_of(missing, fill=True), name, fail)
    elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_decimal(array.type):
        values = pc.cast(array, pa.float64())
    else:
        raise ChunkError(-1, f"column {name}: type {array.type}; expected numbers (or text holding numbers)")
    out = numpy_of(values, fill=np.nan).astype(np.float64)  # nulls -> NaN, the missing value
    fail(np.isinf(out), lambda r: f"column {name}: {out[r]!r} is not a finite number")
    return np.where(np.isinf(out), np.nan, out)


def _numbers_one_by_one(texts: list, missing: np.ndarray, name: str, fail) -> np.ndarray:
    """The slow path of a text column with a field that is not a number: find and report (or drop) those rows."""
    out = np.full(len(texts), np.nan)
    bad = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        if missing[i]:
            continue
        try:
            out[i] = float(text)
        except ValueError:
            bad[i] = True
    fail(bad | np.isinf(out), lambda r: f"column {name}: {texts[r]!r} is not a number")
    return np.where(bad | np.isinf(out), np.nan, out)


def _lists(column: pa.ChunkedArray, feature) -> tuple[np.ndarray, pa.Array, np.ndarray | None]:
    """(per-row lengths after truncation, the kept values, per-row values cut (None: no limit))."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = pc.split_pattern(pc.fill_null(array, EMPTY) if array.null_count else array, feature.delimiter)
    elif not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        raise ChunkError(-1, f"column {feature.name}: type {array.type}; expected a list column or text joined "
                             f"by {feature.delimiter!r} (multi_hot)")
    n = len(array)
    parents = numpy_of(pc.list_parent_indices(array)).astype(np.int64)
    values = pc.list_flatten(array)
    present = numpy_of(pc.is_valid(values), fill=False)
    if _is_text(values.type):  # an empty text is no value (`a||b`, a trailing delimiter)
        present &= numpy_of(pc.not_equal(values, EMPTY), fill=False)
    elif pa.types.is_dictionary(values.type) and _is_text(values.type.value_type):  # checked once per distinct text
        present &= numpy_of(pc.not_equal(values.dictionary, EMPTY), fill=False)[numpy_of(values.indices)]
    keep = None if present.all() else np.flatnonzero(present)
    if keep is not None:
        parents = parents[keep]
    lengths = np.bincount(parents, minlength=n).astype(np.int64)
    overflow = None
    if feature.max_length:
        starts = np.cumsum(lengths) - lengths
        kept = (np.arange(parents.size) - starts[parents]) < feature.max_length
        overflow = np.maximum(lengths - feature.max_length, 0)
        lengths = np.minimum(lengths, feature.max_length)
        if not kept.all():
            keep = np.flatnonzero(kept) if keep is None else keep[kept]
    if keep is not None:  # one gather of the values kept
        values = values.take(arrow(keep))
    return lengths.astype(np.int32), values, overflow


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _keep_lists(lengths: np.ndarray, keys: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    owner = np.repeat(np.arange(lengths.size), lengths)
    return lengths[keep], keys[keep[owner]]
