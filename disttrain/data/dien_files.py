"""The DIEN benchmark's files (alibaba/ai-matrix `macro_benchmark/DIEN_TF2`; one directory, `data.path`), read.

- `local_train_splitByUser`, `local_test_splitByUser`: tab-separated `label, uid, mid, cat, mid history, cat
  history`, the histories joined by `\\x02` (one category per item); LF or CRLF line ends.
- `uid_voc.pkl`, `mid_voc.pkl`, `cat_voc.pkl`: pickled `dict[str, int]`. They are read with an unpickler that
  refuses every global (class, function), so a hostile or foreign pickle cannot run code; anything but a plain
  dict of strings to non-negative ints is refused with one line.
- `reviews-info` (`uid, mid, rating, time`): the pool negatives are sampled from (one entry per review, so
  popular items are drawn more often); `item-info` (`mid, cat`): a sampled negative's category.

As the benchmark: ids unknown to a vocabulary map to 0 (`default_mid`/`default_cat`; uid 0 is a real user,
as there) and are counted and reported.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from disttrain.errors import DataError

TRAIN_FILE, TEST_FILE = "local_train_splitByUser", "local_test_splitByUser"
VOCAB_FILES = ("uid_voc.pkl", "mid_voc.pkl", "cat_voc.pkl")

class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells a bytes object: harmless
            import _codecs

            return _codecs.encode
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")  # every other class, function, reducer


def load_vocab(path: str | Path) -> dict[str, int]:
    """A DIEN vocabulary pickle as a dict of str to int, read without executing anything."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the vocabulary ({exc.strerror})") from None
    try:
        vocab = _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path}: not a plain pickled dict ({exc}); expected a pickle of dict[str, int] as "
                        "the DIEN benchmark's generate_voc.py writes") from None
    if not isinstance(vocab, dict):
        raise DataError(f"{path}: holds a {type(vocab).__name__}; expected a dict of str to int")
    out = {}
    for key, value in vocab.items():
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{path}: entry {key!r}: {value!r}; expected str keys and int ids >= 0")
        out[key] = value
    return out


@dataclass
class DienSamples:
    """Samples as id arrays; histories ragged: sample i's are hist_*[offsets[i]:offsets[i + 1]]."""

    labels: np.ndarray  # uint8 [N]
    uid: np.ndarray  # int64 [N]
    mid: np.ndarray
    cat: np.ndarray
    offsets: np.ndarray  # int64 [N + 1]
    hist_mid: np.ndarray  # int64 [total history]
    hist_cat: np.ndarray
    unknown: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.labels.size

    @property
    def history_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def read_samples(path: str | Path, vocabs: tuple[dict, dict, dict]) -> DienSamples:
    """Parse a DIEN sample file; a malformed row stops with `file:line` and what was expected."""
    path = Path(path)
    uid_voc, mid_voc, cat_voc = vocabs
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: byte {exc.start} is not UTF-8; expected the DIEN sample text") from None
    labels, uids, mids, cats, lengths, hist_mids, hist_cats = [], [], [], [], [], [], []
    unknown = {"uid": 0, "mid": 0, "cat": 0}
    uid_get, mid_get, cat_get = uid_voc.get, mid_voc.get, cat_voc.get
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 6:
            raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields; expected 6 (label, uid, mid, cat, "
                            "mid history, cat history)")
        label, uid, mid, cat, mid_hist, cat_hist = fields
        if label not in ("0", "1", "0.0", "1.0"):
            raise DataError(f"{path}:{number}: label {label!r}; expected 0 or 1")
        item_list = mid_hist.split("\x02") if mid_hist else []
        cat_list = cat_hist.split("\x02") if cat_hist else []
        if len(item_list) != len(cat_list):
            raise DataError(f"{path}:{number}: {len(item_list)} history items but {len(cat_list)} history "
                            "categories; expected one category per item")
        labels.append(label[0] == "1")
        for name, get, key, out in (("uid", uid_get, uid, uids), ("mid", mid_get, mid, mids),
                                    ("cat", cat_get, cat, cats)):
            value = get(key)
            if value is None:
                unknown[name] += 1
                value = 0
            out.append(value)
        ids = [mid_get(m, -1) for m in item_list]
        cids = [cat_get(c, -1) for c in cat_list]
        if -1 in ids or -1 in cids:
            unknown["mid"] += ids.count(-1)
            unknown["cat"] += cids.count(-1)
            ids = [max(i, 0) for i in ids]
            cids = [max(c, 0) for c in cids]
        hist_mids.extend(ids)
        hist_cats.extend(cids)
        lengths.append(len(ids))
    if not labels:
        raise DataError(f"{path}: no samples; expected lines of label, uid, mid, cat, mid history, cat history")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    as64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return DienSamples(np.asarray(labels, dtype=np.uint8), as64(uids), as64(mids), as64(cats), offsets,
                       as64(hist_mids), as64(hist_cats), unknown)


def read_negative_pool(directory: Path, mid_voc: dict, cat_voc: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(item ids, their category ids, items without a category) of the review pool, as the benchmark maps them."""
    categories: dict[str, str] = {}
    for number, line in enumerate(_lines(directory / "item-info"), 1):
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{directory / 'item-info'}:{number}: expected mid<TAB>cat")
        categories.setdefault(parts[0], parts[1])
    cat_of_mid = {mid_voc.get(m, 0): cat_voc.get(c, 0) for m, c in categories.items()}
    pool = []
    for number, line in enumerate(_lines(directory / "reviews-info"), 1):
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{directory / 'reviews-info'}:{number}: expected uid<TAB>mid<TAB>rating<TAB>time")
        pool.append(mid_voc.get(parts[1], 0))
    if not pool:
        raise DataError(f"{directory / 'reviews-info'}: empty; expected the reviews negatives are sampled from")
    mids = np.asarray(pool, dtype=np.int64)
    missing = sum(1 for m in set(pool) if m not in cat_of_mid)
    cats = np.asarray([cat_of_mid.get(m, 0) for m in pool], dtype=np.int64)
    return mids, cats, missing


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: byte {exc.start} is not UTF-8") from None


@dataclass
class DienDataset:
    train: DienSamples
    test: DienSamples
    pool_mid: np.ndarray  # negatives are drawn from here (with repetition: popular items more often)
    pool_cat: np.ndarray
    table_rows: tuple[int, int, int]
    description: str = ""
    notes: list[str] = field(default_factory=list)


def vocab_rows(path: str | Path) -> tuple[int, int, int]:
    """Table rows the vocabularies of a DIEN directory need (largest id + 1)."""
    return tuple(max(load_vocab(Path(path) / name).values(), default=0) + 1 for name in VOCAB_FILES)


def count_samples(path: str | Path, split: str = "train") -> int:
    name = TRAIN_FILE if split == "train" else TEST_FILE
    try:
        data = (Path(path) / name).read_bytes()
    except OSError as exc:
        raise DataError(f"{Path(path) / name}: cannot read ({exc.strerror})") from None
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def open_dien(path: str | Path) -> DienDataset:
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"data.path: {directory} is not a directory; expected the DIEN benchmark's files")
    vocabs = tuple(load_vocab(directory / name) for name in VOCAB_FILES)
    train = read_samples(directory / TRAIN_FILE, vocabs)
    test = read_samples(directory / TEST_FILE, vocabs)
    pool_mid, pool_cat, missing = read_negative_pool(directory, vocabs[1], vocabs[2])
    rows = tuple(max(v.values(), default=0) + 1 for v in vocabs)
    notes = []
    for split, samples in (("train", train), ("test", test)):
        counts = ", ".join(f"{n} {k}" for k, n in samples.unknown.items() if n)
        if counts:
            notes.append(f"{split}: ids not in the vocabularies mapped to 0 as the benchmark does: {counts}")
    if missing:
        notes.append(f"reviews-info: {missing} items have no category in item-info; their negatives use category 0")
    return DienDataset(train, test, pool_mid, pool_cat, rows, description=str(directory), notes=notes)
