"""Pass 2 of `disttrain data prepare`: the 64-bit keys of each categorical feature -> contiguous ids, and the raw
dense values -> their transforms. One table per worker task.

Vocabulary features count their keys over the training split only: keys seen at least `min_count` times get ids
1.. (most frequent first, or in order of first appearance with `id_order: first-seen`); everything else, and any
key a new day brings (`--vocab-from`), is id 0, the out-of-vocabulary id. Hashed features need no vocabulary:
id = key % rows. Raw features (`raw: true`, for dynamic tables) keep the 64-bit key itself as a signed id.
A single-hot feature's missing value (an empty field, a null) hashes as the empty text: with `missing: own_id` it
is a value like any other; with `missing: other` it takes id 0 and never enters the vocabulary. The dense columns
are `tabular_dense`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from disttrain.errors import DataError
from disttrain.prepare.hashing import FNV_OFFSET, arrow, numpy_of
from disttrain.prepare.output import sha256_array
from disttrain.prepare.schema import INDICATOR_SUFFIX

OOV = 0  # the id of values outside a vocabulary
MISSING_KEY = FNV_OFFSET  # the key of a missing value: the hash of the empty text


def vocabulary_ids(keys: np.ndarray, train: int, *, min_count: int, id_order: str,
                   exclude: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(the vocabulary: keys that get ids 1.., in id order; every key's id (OOV for the others); how many distinct
    keys the training split has) from the keys of all rows, the first `train` of which are the training split;
    the key `exclude` (if any) stays out of the vocabulary. One hash pass (Arrow's dictionary encoding, whose
    dictionary is in order of first appearance) instead of sorting every key."""
    encoded = pc.dictionary_encode(arrow(np.asarray(keys, dtype=np.uint64)))
    index, unique = numpy_of(encoded.indices), numpy_of(encoded.dictionary)
    counts = np.bincount(index[:train], minlength=unique.size)
    seen = int(np.count_nonzero(counts))
    if exclude is not None:
        counts[unique == np.uint64(exclude)] = 0
    kept = np.flatnonzero(counts >= max(min_count, 1))
    # first-seen: the dictionary's order (training rows come first); frequency: most frequent first, ties by key
    order = kept if id_order == "first-seen" else kept[np.lexsort((unique[kept], -counts[kept]))]
    id_of = np.full(unique.size, OOV, dtype=np.int32)
    id_of[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return unique[order], id_of[index], seen


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
        keys = _keys_file(tmp / f"keys_{name}.u64", int(offsets[-1]))
        train_keys = keys[: int(offsets[train_rows])]
    else:
        keys = _keys_file(tmp / f"keys_{name}.u64", rows)
        train_keys = keys[:train_rows]
    info = {"name": name, "multi_hot": feature["multi_hot"], "pooling": feature["pooling"]}
    # missing: a row with no value (an empty bag) or the empty text's key; `other` sends those to id 0
    missing = np.diff(offsets) == 0 if feature["multi_hot"] else np.asarray(keys) == MISSING_KEY
    info.update(missing=int(np.count_nonzero(missing)), missing_policy=feature["missing"])
    if feature.get("raw"):  # the 64-bit key is the id (a dynamic table's raw id); rows = the expected size
        ids = np.asarray(keys).view(np.int64)
        count = distinct(train_keys)
        info.update(mode="raw", rows=max(count, 1), reserved_default=False, distinct_train=count)
    elif feature["hash"]:
        ids = (np.asarray(keys) % np.uint64(feature["hash"])).astype(np.int32)
        info.update(mode="hash", hash_rows=feature["hash"], rows=feature["hash"], reserved_default=False,
                    distinct_train=distinct(train_keys))
    else:
        vocab, ids, distinct_train, unseen = _vocabulary(task, np.asarray(keys), train_keys, missing)
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


def _keys_file(path: Path, count: int) -> np.ndarray:
    """A feature's keys, memory-mapped (an empty file, a multi-hot column without a value, cannot be)."""
    return np.memmap(path, dtype=np.uint64, mode="r", shape=(count,)) if count else np.zeros(0, np.uint64)


def _vocabulary(task: dict, keys: np.ndarray, train_keys: np.ndarray, missing: np.ndarray):
    """(vocabulary, ids, distinct training keys, values out of the vocabulary) of a vocabulary feature: built from
    the training split, or the one of `--vocab-from`."""
    feature = task["feature"]
    other = feature["missing"] == "other" and not feature["multi_hot"]
    if task.get("vocab"):
        vocab = np.fromfile(task["vocab"], dtype=np.uint64)
        ids, _ = lookup(vocab, keys)
        distinct_train = distinct(train_keys)
    else:
        vocab, ids, distinct_train = vocabulary_ids(keys, train_keys.size, min_count=feature["min_count"],
                                                    id_order=task["id_order"], exclude=MISSING_KEY if other else None)
    if other:
        ids[missing] = OOV
    unseen = int(np.count_nonzero(ids == OOV)) - (int(np.count_nonzero(missing)) if other else 0)
    return vocab, ids, distinct_train, unseen


def _write(array: np.ndarray, tmp: Path, name: str, info: dict) -> None:
    """Write a file and note its sha256 from memory (meta.json lists it; no second read)."""
    array = np.ascontiguousarray(array)
    array.tofile(tmp / name)
    info.setdefault("sha256", {})[name] = sha256_array(array)


def check_same_schema(mine: dict, theirs: dict, where: str) -> None:
    """--vocab-from: the new data must have the features the vocabularies were built for."""
    def dense(schema: dict) -> list[str]:  # with the missing indicators: the width the model was built for
        return [d["name"] for d in schema["dense"]] + [d["name"] + INDICATOR_SUFFIX for d in schema["dense"]
                                                        if d.get("missing_indicator")]

    if [f["name"] for f in mine["categorical"]] != [f["name"] for f in theirs["categorical"]] or \
            dense(mine) != dense(theirs):
        raise DataError(f"--vocab-from {where}: its schema has dense {dense(theirs)} and "
                        f"categorical {[f['name'] for f in theirs['categorical']]}; this run's has "
                        f"{dense(mine)} and {[f['name'] for f in mine['categorical']]}")
