"""Pass 2 of `disttrain data prepare`: the 64-bit keys of each categorical feature -> contiguous ids, and the raw
dense values -> their transforms. One table per worker task.

Vocabulary features count their keys over the training split only: keys seen at least `min_count` times get ids
1.. (most frequent first, or in order of first appearance with `id_order: first-seen`); everything else, and any
key a new day brings (`--vocab-from`), is id 0, the out-of-vocabulary id. Hashed features need no vocabulary:
id = key % rows. Raw features (`raw: true`, for dynamic tables) keep the 64-bit key itself as a signed id.
Dense statistics (mean, standard deviation, minimum, maximum) come from the training split and
travel in meta.json, so `--vocab-from` applies the same transform to a new day.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from disttrain.errors import DataError
from disttrain.prepare.hashing import arrow, numpy_of

OOV = 0  # the id of values outside a vocabulary


def vocabulary_ids(keys: np.ndarray, train: int, *, min_count: int, id_order: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(the vocabulary: keys that get ids 1.., in id order; every key's id (OOV for the others); how many distinct
    keys the training split has) from the keys of
    all rows, the first `train` of which are the training split. One hash pass (Arrow's dictionary encoding,
    whose dictionary is in order of first appearance) instead of sorting every key."""
    encoded = pc.dictionary_encode(arrow(np.asarray(keys, dtype=np.uint64)))
    index, unique = numpy_of(encoded.indices), numpy_of(encoded.dictionary)
    counts = np.bincount(index[:train], minlength=unique.size)
    kept = np.flatnonzero(counts >= max(min_count, 1))
    # first-seen: the dictionary's order (training rows come first); frequency: most frequent first, ties by key
    order = kept if id_order == "first-seen" else kept[np.lexsort((unique[kept], -counts[kept]))]
    id_of = np.full(unique.size, OOV, dtype=np.int32)
    id_of[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return unique[order], id_of[index], int(np.count_nonzero(counts))


def lookup(vocab: np.ndarray, keys: np.ndarray, base: int = 1) -> tuple[np.ndarray, int]:
    """(ids of `keys` in `vocab` (position + base; OOV when absent), how many were absent)."""
    position = pc.index_in(arrow(np.asarray(keys, dtype=np.uint64)), value_set=arrow(np.asarray(vocab, dtype=np.uint64)))
    absent = position.null_count
    ids = numpy_of(pc.add(position, base), fill=OOV).astype(np.int32)
    return ids, int(absent)


def distinct(keys: np.ndarray) -> int:
    """How many different keys (one sort: faster here than a hash table or np.unique)."""
    ordered = np.sort(np.asarray(keys))
    return int(ordered.size and 1 + np.count_nonzero(ordered[1:] != ordered[:-1]))


def table_task(task: dict) -> dict:
    """Worker: one categorical feature's ids (and vocabulary file)."""
    tmp, feature, rows, train_rows = Path(task["tmp"]), task["feature"], task["rows"], task["train_rows"]
    name = feature["name"]
    if feature["multi_hot"]:
        lengths = np.fromfile(tmp / f"len_{name}.i32", dtype=np.int32)
        offsets = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        keys = np.memmap(tmp / f"keys_{name}.u64", dtype=np.uint64, mode="r", shape=(int(offsets[-1]),))
        train_keys = keys[: int(offsets[train_rows])]
    else:
        keys = np.memmap(tmp / f"keys_{name}.u64", dtype=np.uint64, mode="r", shape=(rows,))
        train_keys = keys[:train_rows]
    info = {"name": name, "multi_hot": feature["multi_hot"], "pooling": feature["pooling"]}
    if feature.get("raw"):  # the 64-bit key is the id (a dynamic table's raw id); rows = the expected size
        ids = np.asarray(keys).view(np.int64)
        count = distinct(train_keys)
        info.update(mode="raw", rows=max(count, 1), reserved_default=False, distinct_train=count)
    elif feature["hash"]:
        ids = (np.asarray(keys) % np.uint64(feature["hash"])).astype(np.int32)
        info.update(mode="hash", hash_rows=feature["hash"], rows=feature["hash"], reserved_default=False,
                    distinct_train=distinct(train_keys))
    else:
        given = task.get("vocab")
        if given:
            vocab = np.fromfile(given, dtype=np.uint64)
            ids, unseen = lookup(vocab, np.asarray(keys))
            distinct_train = distinct(train_keys)
        else:
            vocab, ids, distinct_train = vocabulary_ids(np.asarray(keys), train_keys.size,
                                                        min_count=feature["min_count"], id_order=task["id_order"])
            unseen = int(np.count_nonzero(ids == OOV))
        (tmp / "vocab").mkdir(exist_ok=True)
        _write(vocab, tmp, f"vocab/{name}.u64", info)
        info.update(mode="vocabulary", min_count=feature["min_count"], rows=int(vocab.size) + 1,
                    reserved_default=True, distinct_train=distinct_train, out_of_vocabulary=unseen)
    if feature["multi_hot"]:
        (tmp / "multi").mkdir(exist_ok=True)
        _write(ids, tmp, f"multi/{name}.values.{'i64' if feature.get('raw') else 'i32'}", info)
        _write(offsets, tmp, f"multi/{name}.offsets.i64", info)
        info.update(values=int(offsets[-1]), max_length=feature["max_length"],
                    mean_length=round(float(offsets[-1]) / max(rows, 1), 4))
    elif feature.get("raw"):
        (tmp / "raw").mkdir(exist_ok=True)
        _write(ids, tmp, f"raw/{name}.i64", info)
    else:
        out = np.memmap(tmp / "sparse.i32", dtype=np.int32, mode="r+", offset=4 * task["slot"] * rows, shape=(rows,))
        out[:] = ids
        out.flush()
    del keys
    return info


def _write(array: np.ndarray, tmp: Path, name: str, info: dict) -> None:
    """Write a file and note its sha256 from memory (meta.json lists it; no second read)."""
    array = np.ascontiguousarray(array)
    array.tofile(tmp / name)
    info.setdefault("sha256", {})[name] = hashlib.sha256(memoryview(array).cast("B")).hexdigest()


def dense_task(tmp: str, rows: int, train_rows: int, transforms: list[str],
               stats: list[dict] | None) -> tuple[list[dict], dict]:
    """Worker: the training split's statistics (unless given: `--vocab-from`), then dense.f32 transformed;
    (statistics, {file: sha256})."""
    raw = np.memmap(Path(tmp) / "dense.raw.f32", dtype="<f4", mode="r", shape=(rows, len(transforms)))
    stats = stats or dense_stats(raw, train_rows)
    written: dict = {}
    _write(transform_dense(raw, transforms, stats), Path(tmp), "dense.f32", written)
    return stats, written["sha256"]


def dense_stats(raw: np.ndarray, train_rows: int) -> list[dict]:
    """Per dense column, from the training split: mean, std, min, max (float64)."""
    train = raw[:train_rows].astype(np.float64)
    if train_rows == 0:
        return [{"mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0} for _ in range(raw.shape[1])]
    return [{"mean": float(c.mean()), "std": float(c.std()), "min": float(c.min()), "max": float(c.max())}
            for c in train.T]


def transform_dense(raw: np.ndarray, transforms: list[str], stats: list[dict]) -> np.ndarray:
    """float32 [rows, D] after each column's transform, block by block (bounded memory)."""
    out = np.empty(raw.shape, dtype=np.float32)
    for lo in range(0, raw.shape[0], 1 << 20):
        block = raw[lo: lo + (1 << 20)].astype(np.float64)
        for j, (kind, s) in enumerate(zip(transforms, stats)):
            column = block[:, j]
            if kind == "log1p":
                column = np.log1p(np.maximum(column, 0.0))
            elif kind == "standardize":
                column = (column - s["mean"]) / (s["std"] if s["std"] > 0 else 1.0)
            elif kind == "minmax":
                span = s["max"] - s["min"]
                column = (column - s["min"]) / span if span > 0 else np.zeros_like(column)
            block[:, j] = column
        out[lo: lo + block.shape[0]] = block
    return out


def check_same_schema(mine: dict, theirs: dict, where: str) -> None:
    """--vocab-from: the new data must have the features the vocabularies were built for."""
    if [f["name"] for f in mine["categorical"]] != [f["name"] for f in theirs["categorical"]] or \
            [d["name"] for d in mine["dense"]] != [d["name"] for d in theirs["dense"]]:
        raise DataError(f"--vocab-from {where}: its schema has dense {[d['name'] for d in theirs['dense']]} and "
                        f"categorical {[f['name'] for f in theirs['categorical']]}; this run's has "
                        f"{[d['name'] for d in mine['dense']]} and {[f['name'] for f in mine['categorical']]}")
