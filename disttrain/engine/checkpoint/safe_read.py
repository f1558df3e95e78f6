"""Reading a checkpoint is reading data, never running code.

A checkpoint directory may have been written by anyone who can write there; its sha256 manifest proves it is
whole, not who wrote it. So nothing in it is ever executed or trusted to point elsewhere:

- torch.distributed.checkpoint's `.metadata` is a pickle, which torch reads with `pickle.load`. Here it is read
  by an unpickler that knows only the plain records DCP writes (`Metadata`, tensor and chunk descriptions, storage
  locations, `torch.Size`, dtypes, a layout name, a path); any other class, function or reducer stops the load
  with one line, before it is created.
- Every storage location the metadata names must be a file of that rank's directory, listed in the manifest, with
  no transform; tensors themselves are read with `torch.load(weights_only=True)` (torch's own reader).
- Every entry is a tensor. DCP keeps anything else as a byte entry and reads it with `torch.load(weights_only=False)`,
  which runs code: a byte entry is refused when the metadata is read, and by the load planner if one gets further.
  These three checks live in `safe_dcp` (the unpickler, `SafeFileSystemReader`, `TensorsOnlyLoadPlanner`); the two
  below, here.
- Every path the manifest names must stay inside the checkpoint: no absolute path, no `..`, no symlink.
- `meta.json` is checked field by field (types, ranges, shards inside their tables) before anything is sized from it.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from disttrain.engine.checkpoint.layout import BUFFER_DTYPES
from disttrain.errors import DataError
from disttrain.tables import NUM_BUCKETS

MAX_STEP = 10**12  # a step count no real run reaches: anything above is a damaged or forged meta.json


def check_manifest_paths(path: Path, files) -> None:
    """Every file the manifest names lies inside the checkpoint directory: relative, no `..`, no symlink."""
    root = path.resolve()
    for rel in files:
        parts = PurePosixPath(rel).parts if isinstance(rel, str) else ()
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
            raise DataError(f"checkpoint {path}: the manifest names {rel!r}; expected a path inside the checkpoint")
        current = path
        for part in parts:
            current = current / part
            if current.is_symlink():
                raise DataError(f"checkpoint {path}: {rel} passes through a symbolic link; a checkpoint holds plain "
                                "files only")
        if not (root / rel).resolve().is_relative_to(root):
            raise DataError(f"checkpoint {path}: the manifest names {rel!r}; expected a path inside the checkpoint")


def _int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_meta(meta: dict, path: Path) -> dict:
    """`meta.json`'s fields have the types and ranges a checkpoint's do; one line naming the first that does not."""
    where = f"checkpoint {path}: meta.json"
    if not isinstance(meta, dict):
        raise DataError(f"{where} holds a {type(meta).__name__}, expected an object")
    if not _int(meta.get("step"), 0, MAX_STEP):
        raise DataError(f"{where}: step {meta.get('step')!r}, expected an integer in [0, {MAX_STEP}]")
    if not _int(meta.get("world_size"), 1, 1 << 20):
        raise DataError(f"{where}: world_size {meta.get('world_size')!r}, expected a positive integer")
    tables = meta.get("tables")
    if not isinstance(tables, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and _int(t.get("rows"), 1, 1 << 48)
            and _int(t.get("dim"), 1, 1 << 20) for t in tables):
        raise DataError(f"{where}: tables {str(tables)[:80]}, expected a list of {{name, rows, dim}}")
    sizes = {t["name"]: (t["rows"], t["dim"]) for t in tables}
    for record in meta.get("shards") if isinstance(meta.get("shards"), list) else [None]:
        _check_shard(record, sizes, meta["world_size"], where)
    dense = meta.get("dense")
    if not isinstance(dense, dict) or not all(
            isinstance(shape, list) and all(_int(d, 0, 1 << 40) for d in shape) for shape in dense.values()):
        raise DataError(f"{where}: dense {str(dense)[:80]}, expected parameter shapes")
    buffers = meta.get("dense_buffers", {})  # absent before buffers were saved
    if not isinstance(buffers, dict) or not all(
            isinstance(b, dict) and b.get("dtype") in BUFFER_DTYPES and isinstance(b.get("shape"), list)
            and all(_int(d, 0, 1 << 40) for d in b["shape"]) for b in buffers.values()):
        raise DataError(f"{where}: dense_buffers {str(buffers)[:80]}, expected buffer shapes and dtypes")
    for key, kind in (("history", list), ("config", str), ("optimizer", str)):
        if not isinstance(meta.get(key), kind):
            raise DataError(f"{where}: {key} is a {type(meta.get(key)).__name__}, expected a {kind.__name__}")
    return meta


def _check_shard(record, sizes: dict, world: int, where: str) -> None:
    ok = isinstance(record, dict) and record.get("table") in sizes and isinstance(record.get("key"), str)
    if ok and record.get("dynamic") is not None:  # a dynamic table's part: a bucket range, counted ids
        stats = record.get("stats")
        ok = (record["dynamic"] is True and all(_int(record.get(k), 0, 1 << 40) for k in ("live", "candidates"))
              and _int(record.get("step"), 0, MAX_STEP) and isinstance(stats, dict)
              and all(_int(stats.get(k), 0, 1 << 62) for k in ("admitted", "evicted")))
        sizes = {**sizes, record["table"]: (NUM_BUCKETS, sizes[record["table"]][1])}
    if ok:
        rows, dim = sizes[record["table"]]
        r, c = record.get("rows"), record.get("cols")
        ok = (_int(record.get("rank"), 0, world - 1) and isinstance(r, list) and isinstance(c, list)
              and len(r) == 2 and len(c) == 2 and _int(r[0], 0, rows) and _int(r[1], r[0], rows)
              and _int(c[0], 0, dim) and _int(c[1], c[0], dim))
    if not ok:
        raise DataError(f"{where}: shard {str(record)[:100]} does not lie inside its table and world")
