"""The inputs of `disttrain data prepare`: each file's kind (Parquet, or CSV/TSV plain or compressed), its columns
checked against the schema, and the tasks pass 1 reads it in (Parquet row groups, CSV byte ranges cut at line
ends, or decompressed blocks handed to the workers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from disttrain.errors import DataError
from disttrain.prepare.criteo_inputs import byte_ranges
from disttrain.prepare.schema import Schema
from disttrain.prepare.tabular_read import Chunk, Task

CHUNK_BYTES = 16 << 20
PARQUET = (".parquet", ".pq")
CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4"}


@dataclass
class Input:
    path: str
    format: str  # parquet | csv
    bytes: int
    codec: str | None = None
    names: tuple[str, ...] = ()
    delimiter: str = ","
    header_lines: int = 0
    row_groups: int = 0
    rows: int = 0
    lines: int = 0
    chunks: int = 0
    bad_rows: int = 0
    bad_examples: list[str] = field(default_factory=list)

    @property
    def bytes_per_task(self) -> int:
        return self.bytes // max(self.row_groups, 1) if self.format == "parquet" else 0

    def where(self, row: int) -> str:
        if self.format == "parquet":
            return f"{self.path} row group {self.chunks}" + (f", row {row}" if row >= 0 else "")
        return f"{self.path}:{self.header_lines + self.lines + row + 1}" if row >= 0 else self.path

    def add(self, chunk: Chunk) -> None:
        for row, reason in chunk.bad:
            if len(self.bad_examples) < 5:
                self.bad_examples.append(f"{self.where(row)}: {reason}")
        self.bad_rows += chunk.bad_count
        self.rows += chunk.rows
        self.lines += chunk.lines
        self.chunks += 1

    def to_json(self) -> dict:
        return {"path": str(Path(self.path).resolve()), "format": self.format, "bytes": self.bytes,
                "codec": self.codec,
                "rows": self.rows, "bad_rows": self.bad_rows, "bad_examples": self.bad_examples,
                **({"row_groups": self.row_groups} if self.format == "parquet" else
                   {"lines": self.lines, "header": bool(self.header_lines), "delimiter": self.delimiter})}


def _missing(path: str, schema: Schema, names: list[str]) -> None:
    absent = [c for c in schema.columns if c not in names]
    if absent:
        raise DataError(f"{path}: column {absent[0]!r} (schema {schema.source}) not found; its columns are "
                        f"{', '.join(names[:30])}{' ...' if len(names) > 30 else ''}")


def _parquet(path: str, schema: Schema, first: pa.Schema | None) -> tuple[Input, pa.Schema]:
    try:
        meta = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    arrow = meta.schema_arrow
    _missing(path, schema, arrow.names)
    mine = pa.schema([arrow.field(c) for c in schema.columns])
    if first is not None and not mine.equals(first):
        other = next(f for f, g in zip(mine, first) if not f.equals(g))
        expected = first.field(other.name)
        raise DataError(f"{path}: column {other.name} is {other.type}, but the first file has it as {expected.type}; "
                        "expected every Parquet file with the first one's schema")
    return Input(path, "parquet", Path(path).stat().st_size, row_groups=meta.num_row_groups), mine


def _open_text(path: str, codec: str | None):
    return pa.input_stream(path, compression=codec) if codec else open(path, "rb")


def _csv(path: str, schema: Schema, opts) -> Input:
    suffixes = Path(path).suffixes
    codec = CODECS.get(suffixes[-1].lower()) if suffixes else None
    try:
        with _open_text(path, codec) as f:
            first = f.read(1 << 20).split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    base = Path(path).name.lower()
    delimiter = {"tab": "\t", "comma": ",", "\\t": "\t"}.get(opts.delimiter, opts.delimiter)
    if opts.delimiter == "auto":
        delimiter = "\t" if ".tsv" in base or first.count("\t") > first.count(",") else ","
    if len(delimiter) != 1:
        raise DataError(f"--delimiter: got {opts.delimiter!r}, expected tab, comma, auto or one character")
    fields = [x.strip() for x in first.split(delimiter)]
    if opts.header not in ("auto", "yes", "no"):
        raise DataError(f"--header: got {opts.header!r}, expected auto, yes or no")
    header = opts.header == "yes" or (opts.header == "auto" and not opts.column_names and schema.label in fields)
    if opts.column_names:
        names = [x.strip() for x in opts.column_names.split(",")]
        if len(names) != len(fields):
            raise DataError(f"--column-names: {len(names)} names, but {path}:1 has {len(fields)} fields")
    elif header:
        names = fields
    else:
        names = [str(i) for i in range(len(fields))]
    _missing(path, schema, names)
    return Input(path, "csv", Path(path).stat().st_size, codec=codec, names=tuple(names), delimiter=delimiter,
                 header_lines=int(header))


def inspect_inputs(paths: list[str], schema: Schema, opts) -> list[Input]:
    if not paths:
        raise DataError("data prepare: no input files given")
    inputs, first = [], None
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: no such file")
        if Path(p).suffix.lower() in PARQUET:
            source, first = _parquet(p, schema, first)
        else:
            source = _csv(p, schema, opts)
        inputs.append(source)
    return inputs


def tasks_of(source: Input, schema: Schema, skip_bad_rows: bool):
    if source.format == "parquet":
        for g in range(source.row_groups):
            yield Task("parquet", source.path, schema, skip_bad_rows, row_group=g)
        return
    common = dict(schema=schema, skip_bad_rows=skip_bad_rows, names=source.names, delimiter=source.delimiter)
    if source.codec is None:
        start = 0
        if source.header_lines:
            with open(source.path, "rb") as f:
                f.readline()
                start = f.tell()
        for a, b in byte_ranges(Path(source.path), start, source.bytes, CHUNK_BYTES):
            yield Task("csv-range", source.path, start=a, stop=b, **common)
        return
    with _open_text(source.path, source.codec) as f:
        rest, header = b"", bool(source.header_lines)
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            data = rest + data
            if header:  # drop the header line once it is whole
                if b"\n" not in data:
                    rest = data
                    continue
                data, header = data.split(b"\n", 1)[1], False
            cut = data.rfind(b"\n") + 1
            rest, data = (data, b"") if cut == 0 else (data[cut:], data[:cut])
            if data:
                yield Task("csv-bytes", source.path, payload=data, **common)
        if rest:
            yield Task("csv-bytes", source.path, payload=rest, **common)
