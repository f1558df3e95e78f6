"""Pass 2 of `disttrain data criteo`: the ids of one table as the reference numbers them, from the raw 32-bit hashes
pass 1 wrote (`pipeline`, `criteo_parse`). Sort the table's hashes once, count them, build the vocabulary (most
frequent first, id 0 for values seen fewer than --vocab-threshold times in training; or every value over all rows
in order of first appearance with `--id-order first-seen`; or the reference's own dictionaries; or, with
--hash-rows, the hashes modulo N numbered densely), then write the ids. The vocabulary file holds the raw hash of
each id (`vocab/C<k>.u32`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from disttrain.prepare.reference_dicts import load_dict

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


def table_task(task: dict) -> dict:
    """Worker: one table's vocabulary (or hash ids) and its id column in sparse.i32."""
    tmp, name, rows, train_rows = Path(task["tmp"]), task["name"], task["rows"], task["train_rows"]
    threshold, hash_rows, id_order, dict_file = task["threshold"], task["hash_rows"], task["id_order"], task["dict"]
    raw = np.memmap(tmp / f"keys_{name}.u32", dtype=np.uint32, mode="r", shape=(rows,))
    out = np.memmap(tmp / "sparse.i32", dtype=np.int32, mode="r+", offset=4 * task["slot"] * rows, shape=(rows,))
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
