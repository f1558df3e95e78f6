"""The inputs of `disttrain data prepare`: each file's kind (Parquet, or CSV/TSV plain or compressed), its columns
checked against the schema, and the tasks pass 1 reads it in (Parquet row groups, or the pieces of a text file
`inputs` cuts: byte ranges cut at line ends, or decompressed blocks handed to the workers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from disttrain.errors import DataError
from disttrain.prepare.inputs import Input, is_number, text_pieces
from disttrain.prepare.schema import Schema
from disttrain.prepare.tabular_read import Task

PARQUET = (".parquet", ".pq")
CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4"}


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
    _unique(path, tuple(arrow.names))
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


@dataclass(frozen=True)
class FirstLine:
    """A CSV/TSV file's first line, split."""

    path: str
    codec: str | None
    delimiter: str
    fields: tuple[str, ...]


def _first_line(path: str, opts) -> FirstLine:
    suffixes = Path(path).suffixes
    codec = CODECS.get(suffixes[-1].lower()) if suffixes else None
    try:
        with _open_text(path, codec) as f:
            first = f.read(1 << 20).split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r").lstrip("\ufeff")
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    delimiter = {"tab": "\t", "comma": ",", "\\t": "\t"}.get(opts.delimiter, opts.delimiter)
    if opts.delimiter == "auto":
        delimiter = "\t" if ".tsv" in Path(path).name.lower() or first.count("\t") > first.count(",") else ","
    if len(delimiter) != 1:
        raise DataError(f"--delimiter: got {opts.delimiter!r}, expected tab, comma, auto or one character")
    return FirstLine(path, codec, delimiter, tuple(x.strip().strip('"') for x in first.split(delimiter)))


def _is_header(line: FirstLine, schema: Schema, header: str, known: tuple[str, ...]) -> bool:
    """`--header auto`: a file's first line is a header when it is `--column-names`, or names the label column
    (unless the label's name is a number, as the positions 0, 1, ... of a file without a header are: a data line
    holds numbers); each file is decided by itself."""
    if header != "auto":
        return header == "yes"
    return line.fields == known or (schema.label in line.fields and not is_number(schema.label))


def _unique(where: str, names: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{where}: column {name!r} named twice; expected each column name once")
        seen.add(name)


def _csv_inputs(lines: list[FirstLine], schema: Schema, opts) -> list[Input]:
    """Each CSV file's column names: its own header, `--column-names`, or the header of the first file that has
    one (a file without a header, such as Avazu's test.csv beside its train.csv); every column name once."""
    if opts.header not in ("auto", "yes", "no"):
        raise DataError(f"--header: got {opts.header!r}, expected auto, yes or no")
    given = tuple(x.strip() for x in opts.column_names.split(",")) if opts.column_names else ()
    if given:
        _unique("--column-names", given)
    headers = [_is_header(line, schema, opts.header, given) for line in lines]
    first = next((line for line, header in zip(lines, headers) if header), None)
    out = []
    for line, header in zip(lines, headers):
        if given:
            names, origin = given, "--column-names"
        elif header:
            names, origin = line.fields, ""
        elif first is not None:
            names, origin = first.fields, f"the header of {first.path}"
        else:
            names, origin = tuple(str(i) for i in range(len(line.fields))), ""
        if origin and len(names) != len(line.fields):
            raise DataError(f"{line.path}:1: {len(line.fields)} fields, but {origin} names {len(names)} columns; "
                            "expected as many (or --column-names)")
        _unique(f"{line.path}:1 (header)" if header and not given else line.path, names)
        _missing(line.path, schema, list(names))
        out.append(Input(line.path, "csv", Path(line.path).stat().st_size, codec=line.codec, names=names,
                         delimiter=line.delimiter, header_lines=int(header)))
    return out


def inspect_inputs(paths: list[str], schema: Schema, opts) -> list[Input]:
    if not paths:
        raise DataError("data prepare: no input files given")
    parquet, lines, first = [], [], None
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: no such file")
        if Path(p).suffix.lower() in PARQUET:
            source, first = _parquet(p, schema, first)
            parquet.append(source)
        else:
            lines.append(_first_line(p, opts))
    csv = iter(_csv_inputs(lines, schema, opts) if lines else [])
    parquets = iter(parquet)
    return [next(parquets) if Path(p).suffix.lower() in PARQUET else next(csv) for p in paths]


def tasks_of(source: Input, schema: Schema, skip_bad_rows: bool):
    if source.format == "parquet":
        for g in range(source.row_groups):
            yield Task("parquet", source.path, schema, skip_bad_rows, row_group=g)
        return
    opener = (lambda path: _open_text(path, source.codec)) if source.codec else None
    for piece in text_pieces(source, opener):
        yield Task("csv", source.path, schema, skip_bad_rows, piece=piece, names=source.names,
                   delimiter=source.delimiter)
