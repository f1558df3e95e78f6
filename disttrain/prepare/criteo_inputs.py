"""The inputs of `disttrain data criteo`: the options, and each raw file's column layout (Criteo's, or one named by
--label-column/--dense-columns/--sparse-columns, with or without a header, tab or comma, plain or gzip). The
pieces pass 1 parses and the train/val/test splits are every preparation's (`inputs`)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from disttrain.errors import DataError
from disttrain.prepare.criteo_parse import DENSE_NAMES, NUM_DENSE, SPARSE_NAMES, Layout
from disttrain.prepare.inputs import (  # noqa: F401 (the splits' names, imported from here before `inputs`)
    KAGGLE_DAYS,
    SPLIT_MODES,
    Input,
    byte_ranges,
    compute_splits,
    is_number,
)


@dataclass
class PrepOptions:
    out: Path
    vocab_threshold: int = 1
    hash_rows: int = 0  # > 0: hash ids modulo this (the reference's --max-ind-range) instead of a vocabulary
    id_order: str = "frequency"  # vocabulary: frequency (0 = rare/unseen) | first-seen (the reference's numbering)
    vocab_dicts: str = ""  # a folder of the reference's *_fea_dict_*.npz: its ids, exactly
    split: str = "auto"
    delimiter: str = "auto"  # tab, comma, auto (from the first line)
    header: str = "auto"  # auto, yes, no
    label_column: str = ""
    dense_columns: str = ""
    sparse_columns: str = ""
    skip_bad_rows: bool = False
    workers: int = 0
    force: bool = False
    progress: bool = True


@dataclass
class Source(Input):
    """A raw file: its layout, and gzip (found by its first bytes, whatever its name) or not."""

    layout: Layout | None = None

    @classmethod
    def of(cls, path: Path, opts: PrepOptions) -> Source:
        layout, header = resolve_layout(path, opts)
        return cls(str(path), "csv", path.stat().st_size, codec="gzip" if is_gzip(path) else None,
                   delimiter=layout.delimiter, header_lines=header, layout=layout)

    def to_json(self) -> dict:
        return {"path": str(Path(self.path).resolve()), "bytes": self.bytes, "compressed": self.codec is not None,
                "lines": self.lines, "rows": self.rows, "bad_rows": self.bad_rows, "bad_examples": self.bad_examples,
                "header": bool(self.header_lines), "layout": self.layout.to_json()}


# ---------------------------------------------------------------------------------------------------------------
# Inputs: delimiter, header and column mapping
# ---------------------------------------------------------------------------------------------------------------


def open_raw(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _first_line(path: Path) -> bytes:
    with open_raw(path) as f:
        return f.readline(1 << 20).rstrip(b"\r\n")


def _parse_column_list(spec: str, names: list[str] | None, what: str) -> list[int]:
    """'3', 'I1', '1-13', 'I1,I2,...' -> 0-based column indices (names need a header)."""
    out: list[int] = []
    lowered = [n.lower() for n in names] if names else None
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "-" in item and all(p.strip().isdigit() for p in item.split("-", 1)):
            lo, hi = (int(p) for p in item.split("-", 1))
            out.extend(range(lo, hi + 1))
        elif item.isdigit():
            out.append(int(item))
        elif lowered is not None and item.lower() in lowered:
            out.append(lowered.index(item.lower()))
        else:
            where = f"the header columns {names[:8]}..." if names else "a 0-based column index (the file has no header)"
            raise DataError(f"--{what}: column {item!r} not found; expected {where}")
    return out


def resolve_layout(path: Path, opts: PrepOptions) -> tuple[Layout, int]:
    """The layout of one input file and how many header lines it has."""
    try:
        first = _first_line(path).decode("utf-8", "replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc})") from exc
    if opts.delimiter in ("tab", "\t"):
        delimiter = "\t"
    elif opts.delimiter in ("comma", ","):
        delimiter = ","
    elif opts.delimiter == "auto":
        delimiter = "\t" if first.count("\t") >= first.count(",") else ","
    else:
        raise DataError(f"--delimiter: got {opts.delimiter!r}, expected tab, comma or auto")
    fields = first.split(delimiter)
    label_text = fields[0].strip() if fields else ""
    if opts.header == "auto":
        has_header = not is_number(label_text) and bool(label_text)
    elif opts.header in ("yes", "no"):
        has_header = opts.header == "yes"
    else:
        raise DataError(f"--header: got {opts.header!r}, expected auto, yes or no")
    names = [f.strip() for f in fields] if has_header else None
    n = len(fields)
    if names and not (opts.label_column or opts.dense_columns or opts.sparse_columns):
        lowered = [x.lower() for x in names]
        wanted = ["label", *[x.lower() for x in DENSE_NAMES], *[x.lower() for x in SPARSE_NAMES]]
        if all(w in lowered for w in wanted):  # the model zoos' header: label, I1..I13, C1..C26 in any order
            label, dense, sparse = lowered.index("label"), [lowered.index(w) for w in wanted[1:14]], \
                [lowered.index(w) for w in wanted[14:]]
        else:
            label, dense, sparse = 0, list(range(1, 1 + NUM_DENSE)), list(range(1 + NUM_DENSE, n))
    else:
        label = _parse_column_list(opts.label_column, names, "label-column")[0] if opts.label_column else 0
        dense = (_parse_column_list(opts.dense_columns, names, "dense-columns") if opts.dense_columns
                 else list(range(1, 1 + NUM_DENSE)))
        sparse = (_parse_column_list(opts.sparse_columns, names, "sparse-columns") if opts.sparse_columns
                  else list(range(1 + NUM_DENSE, n)))
    used = [label, *dense, *sparse]
    if max(used) >= n:
        raise DataError(f"{path}:1: {n} fields separated by {delimiter!r}, but the column mapping uses column "
                        f"{max(used)} (label {label}, dense {_ranges(dense)}, sparse {_ranges(sparse)})")
    if not sparse:
        raise DataError(f"{path}: no categorical columns (expected at least one; see --sparse-columns)")
    if len(set(used)) != len(used):
        raise DataError(f"{path}: the column mapping uses a column twice (label {label}, dense {_ranges(dense)}, "
                        f"sparse {_ranges(sparse)})")
    if names:
        col_names = tuple(names)
    else:
        generated = [f"col{k}" for k in range(n)]
        generated[label] = "label"
        for i, c in enumerate(dense):
            generated[c] = f"I{i + 1}"
        for i, c in enumerate(sparse):
            generated[c] = f"C{i + 1}"
        col_names = tuple(generated)
    layout = Layout(num_fields=n, delimiter=delimiter, label=label, dense=tuple(dense), sparse=tuple(sparse),
                    names=col_names)
    return layout, int(has_header)


def _ranges(cols: list[int]) -> str:
    if cols and cols == list(range(cols[0], cols[-1] + 1)):
        return f"{cols[0]}-{cols[-1]}"
    return ",".join(map(str, cols))
