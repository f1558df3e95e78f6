"""`disttrain data criteo`: raw Criteo logs -> a directory of memory-mappable columns; a preset of `data prepare`.

Output directory (all little-endian, no headers; shapes and splits in `meta.json`):

    labels.u8     [rows]               click labels
    dense.f32     [rows, num_dense]    log(1 + max(x, 0)) of the integer features
    sparse.i32    [num_sparse, rows]   one contiguous id column per table (column-major)
    vocab/C<k>.u32                     raw hash of each id (id 0 is the reserved default in vocabulary mode
                                       with --id-order frequency)
    meta.json                          rows, tables, splits, options, sources, sha256 of every file

Criteo is data for the one driver of every preparation (`pipeline`): a schema (`preset`: the label, the integer
columns as dense features under log(1 + max(x, 0)) with 0 for a missing one, the hex columns as tables C1, C2, ...)
and three plug-ins. The row parser is the fast vectorised one of raw Criteo rows (`criteo_parse`), which applies
the dense transform to the parsed float64 itself (`data prepare` would round to float32 first). The numbering is
the reference's, over the raw 32-bit hashes (`criteo_ids`). And meta.json is version 1's.
"""

from __future__ import annotations

import gzip
import time
from pathlib import Path

from disttrain.config import check_table_count
from disttrain.data.prepared_format import FORMAT, FORMAT_VERSION
from disttrain.errors import DataError
from disttrain.prepare.criteo_ids import table_task
from disttrain.prepare.criteo_inputs import PrepOptions, Source
from disttrain.prepare.criteo_parse import Layout, RawTask
from disttrain.prepare.inputs import text_pieces
from disttrain.prepare.output import check_target
from disttrain.prepare.pipeline import Job, run
from disttrain.prepare.reference_dicts import dict_files, load_dict
from disttrain.prepare.schema import Categorical, Dense, Schema

ID_ORDERS = ("frequency", "first-seen")


def preset(layout: Layout, opts: PrepOptions) -> Schema:
    """Criteo as a schema of `data prepare`: what `data criteo` makes of a file of this layout."""
    numbering = {"hash_rows": opts.hash_rows} if opts.hash_rows else {"min_count": opts.vocab_threshold}
    return Schema(layout.names[layout.label], tuple(Dense(layout.names[c], "log1p", "zero") for c in layout.dense),
                  tuple(Categorical(f"C{i + 1}", **numbering) for i in range(len(layout.sparse))),
                  opts.id_order, "data criteo")


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
    check_target(Path(opts.out), opts.force, "processed")
    sources = []
    for p in raw_paths:
        if not Path(p).is_file():
            raise DataError(f"{Path(p)}: no such file")
        sources.append(Source.of(Path(p), opts))
    first = sources[0].layout
    for s in sources[1:]:
        if (len(s.layout.dense), len(s.layout.sparse)) != (len(first.dense), len(first.sparse)):
            raise DataError(f"{s.path}: {len(s.layout.dense)} dense and {len(s.layout.sparse)} categorical columns, "
                            f"but {sources[0].path} has {len(first.dense)} and {len(first.sparse)}")
    check_table_count(len(first.sparse), f"{sources[0].path}: categorical columns")  # a table each
    dicts = dict_files(opts.vocab_dicts, len(first.sparse)) if opts.vocab_dicts else [""] * len(first.sparse)
    for f in dicts:  # checked before the long parse (the table workers read them again)
        if f:
            load_dict(f)
    return run(CriteoJob(sources, opts, [str(f) for f in dicts]), started)


class CriteoJob(Job):
    """The Criteo preset's plug-ins (see the module's docstring)."""

    phase = "parse"
    keys = "u32"  # the hex ids, as the reference hashes them
    dense_file = "dense.f32"  # the parser's transform is final
    number = staticmethod(table_task)

    def __init__(self, sources: list[Source], opts: PrepOptions, dicts: list[str]):
        super().__init__(opts.out, preset(sources[0].layout, opts), sources, split=opts.split, workers=opts.workers,
                         progress=opts.progress)
        self.opts, self.dicts = opts, dicts

    def tasks(self, source: Source):
        for piece in text_pieces(source, gzip.open if source.codec else None):
            yield RawTask(piece, source.layout, self.opts.skip_bad_rows)

    def id_tasks(self, tmp: Path, rows: int, train_rows: int) -> list[dict]:
        o = self.opts
        return [{"tmp": str(tmp), "slot": t, "name": c.name, "rows": rows, "train_rows": train_rows,
                 "threshold": o.vocab_threshold, "hash_rows": o.hash_rows, "id_order": o.id_order,
                 "dict": self.dicts[t]} for t, c in enumerate(self.schema.categorical)]

    def files(self, tmp: Path) -> list[str]:
        return ["labels.u8", "dense.f32", "sparse.i32"] + [f"vocab/{c.name}.u32" for c in self.schema.categorical]

    def meta(self, rows: int, splits: dict, tables: list[dict], dense) -> dict:
        o = self.opts
        return {"format": FORMAT, "version": FORMAT_VERSION, "rows": rows, "num_dense": len(self.schema.dense),
                "dense_names": [d.name for d in self.schema.dense], "tables": tables, "splits": splits,
                "options": {"mode": "hash" if o.hash_rows else "vocabulary", "vocab_threshold": o.vocab_threshold,
                            "hash_rows": o.hash_rows, "id_order": "reference dictionaries" if o.vocab_dicts else o.id_order,
                            "vocab_dicts": str(Path(o.vocab_dicts).resolve()) if o.vocab_dicts else "",
                            "split": o.split, "skip_bad_rows": o.skip_bad_rows, "dense_transform": "log(1 + max(x, 0))",
                            "missing": "empty integer -> 0; empty categorical -> hash 0"},
                "sources": [s.to_json() for s in self.inputs]}
