"""DIEN data: the benchmark's Amazon Books files, a generator with a planted sequential signal, and the batches.

Files (alibaba/ai-matrix DIEN_TF2; one directory, `data.path`):
- `local_train_splitByUser`, `local_test_splitByUser`: tab-separated `label, uid, mid, cat, mid history, cat
  history`, the histories joined by `\\x02` (one category per item); LF or CRLF line ends.
- `uid_voc.pkl`, `mid_voc.pkl`, `cat_voc.pkl`: pickled `dict[str, int]`. They are read with an unpickler that
  refuses every global (class, function), so a hostile or foreign pickle cannot run code; anything but a plain
  dict of strings to non-negative ints is refused with one line.
- `reviews-info` (`uid, mid, rating, time`): the pool negatives are sampled from (one entry per review, so
  popular items are drawn more often); `item-info` (`mid, cat`): a sampled negative's category.

As the benchmark: ids unknown to a vocabulary map to 0 (`default_mid`/`default_cat`; uid 0 is a real user,
as there) and are counted and reported; the last `max_history` behaviours are kept; each history position
gets a sampled negative item (from the review pool, never the position's own item); samples are cut into
buffers of 20 batches and sorted by history length within a buffer (longest first), and every batch is padded
to its longest history. Unlike the benchmark, the epoch order is a seeded permutation per (seed, epoch) and each
negative a hash of (seed, epoch, sample, position), so 1 and N ranks see identical global batches and a resume
continues exactly.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from disttrain.data.synthetic import Batch
from disttrain.embedding import EmbeddingTableSpec, KeyedBags
from disttrain.errors import DataError

TRAIN_FILE, TEST_FILE = "local_train_splitByUser", "local_test_splitByUser"
VOCAB_FILES = ("uid_voc.pkl", "mid_voc.pkl", "cat_voc.pkl")
SORT_BUFFER_BATCHES = 20  # the benchmark's DataIterator: batch_size * 20 samples sorted by history length
SPLIT_SALT = {"train": 0, "test": 1}


# ----- reading the benchmark's files ------------------------------------------------------------------------


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


# ----- generated data with a planted sequential signal ------------------------------------------------------


def generate(*, users: int, items: int, cats: int, train_samples: int, seed: int = 0,
             mean_history: float = 12.0, max_history: int = 100) -> DienDataset:
    """Samples in the benchmark's shape whose clicks follow the user's *latest* interest.

    Every item belongs to one category (id 0 of items and categories is the reserved default and never
    drawn). A user's behaviour categories walk a fixed chain: each step stays in its category (p 0.5), moves
    to that category's fixed successor (p 0.4) or jumps anywhere (p 0.1); items are drawn within the
    category. A clicked target (label 1) is the walk's next step; its non-clicked twin (label 0, same user
    and history, as in the benchmark's files) carries the clicked target of another random sample, so targets
    alone say nothing (AUC 0.5 without the history) and the signal sits in the order of the history.
    """
    rng = np.random.Generator(np.random.Philox(key=[seed & (2**64 - 1), 0xD1E4]))
    cat_of_item = np.zeros(items, dtype=np.int64)
    cat_of_item[1:] = rng.integers(1, cats, items - 1)
    order = np.argsort(cat_of_item[1:], kind="stable") + 1
    starts = np.searchsorted(cat_of_item[order], np.arange(cats + 1))
    nonempty = np.flatnonzero(np.diff(starts) > 0)  # categories that hold items
    successor = rng.permutation(nonempty)
    succ = np.zeros(cats, dtype=np.int64)
    succ[nonempty] = successor

    def draw_item(c: np.ndarray) -> np.ndarray:
        lo, hi = starts[c], starts[c + 1]
        return order[lo + (rng.random(c.size) * (hi - lo)).astype(np.int64)]

    def walk_step(c: np.ndarray) -> np.ndarray:
        u = rng.random(c.size)
        jump = nonempty[rng.integers(0, nonempty.size, c.size)]
        return np.where(u < 0.5, c, np.where(u < 0.9, succ[c], jump))

    def make(pairs: int) -> DienSamples:
        lengths = np.minimum(1 + rng.geometric(1.0 / mean_history, pairs) - 1, max_history)
        lengths = np.maximum(lengths, 1)
        offsets = np.zeros(pairs + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        hist_cat = np.empty(offsets[-1], dtype=np.int64)
        current = nonempty[rng.integers(0, nonempty.size, pairs)]
        for t in range(int(lengths.max())):
            alive = np.flatnonzero(lengths > t)
            hist_cat[offsets[alive] + t] = current[alive]
            current[alive] = walk_step(current[alive])
        # `current` is now each walk's next step: the clicked target's category
        pos_item = draw_item(current)
        neg_item = pos_item[np.roll(rng.permutation(pairs), 1)] if pairs > 1 else pos_item
        uid = rng.integers(0, users, pairs)
        hist_mid = draw_item(hist_cat)
        # two samples per pair, clicked first, sharing user and history
        rep = np.repeat(np.arange(pairs), 2)
        lengths2 = lengths[rep]
        offsets2 = np.zeros(2 * pairs + 1, dtype=np.int64)
        np.cumsum(lengths2, out=offsets2[1:])
        gather = np.repeat(offsets[rep] - offsets2[:-1], lengths2) + np.arange(offsets2[-1])
        target = np.stack([pos_item, neg_item], 1).reshape(-1)
        return DienSamples(
            labels=np.tile(np.array([1, 0], dtype=np.uint8), pairs), uid=uid[rep], mid=target,
            cat=cat_of_item[target], offsets=offsets2, hist_mid=hist_mid[gather], hist_cat=hist_cat[gather])

    train = make(max(1, train_samples // 2))
    test = make(max(1, train_samples // 20))
    # the negative pool: every behaviour of the training split (as reviews-info holds every review)
    return DienDataset(train, test, train.hist_mid.copy(), train.hist_cat.copy(), (users, items, cats),
                       description=f"generated ({len(train)} train / {len(test)} test samples, seed {seed})")


def write_files(dataset: DienDataset, out: str | Path) -> None:
    """Write a dataset in the benchmark's file format (ids as strings U<n>, M<n>, C<n>; 0 = the defaults)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    users, items, cats = dataset.table_rows
    mid_name = lambda i: "default_mid" if i == 0 else f"M{i}"  # noqa: E731
    cat_name = lambda i: "default_cat" if i == 0 else f"C{i}"  # noqa: E731
    for name, samples in ((TRAIN_FILE, dataset.train), (TEST_FILE, dataset.test)):
        lines = []
        for i in range(len(samples)):
            lo, hi = samples.offsets[i], samples.offsets[i + 1]
            lines.append("\t".join([
                str(int(samples.labels[i])), f"U{samples.uid[i]}", mid_name(samples.mid[i]), cat_name(samples.cat[i]),
                "\x02".join(mid_name(m) for m in samples.hist_mid[lo:hi]),
                "\x02".join(cat_name(c) for c in samples.hist_cat[lo:hi])]))
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocabs = ({f"U{u}": u for u in range(users)}, {mid_name(m): m for m in range(items)},
              {cat_name(c): c for c in range(cats)})
    for name, vocab in zip(VOCAB_FILES, vocabs):
        with open(out / name, "wb") as f:
            pickle.dump(vocab, f, protocol=2)
    cat_of = {}
    for mids, cs in ((dataset.pool_mid, dataset.pool_cat), (dataset.train.mid, dataset.train.cat)):
        cat_of.update(zip(mids.tolist(), cs.tolist()))
    (out / "item-info").write_text("".join(f"{mid_name(m)}\t{cat_name(c)}\n" for m, c in sorted(cat_of.items())))
    (out / "reviews-info").write_text("".join(f"U0\t{mid_name(m)}\t5.0\t0\n" for m in dataset.pool_mid.tolist()))


# ----- batches ----------------------------------------------------------------------------------------------


class DienData:
    """Global batches of DIEN samples; every rank builds only its slice. Same interface as `SyntheticCTR`."""

    def __init__(self, dataset: DienDataset, tables: list[EmbeddingTableSpec], *, global_batch: int, seed: int = 0,
                 shuffle: bool = True, use_history: bool = True):
        if [t.name for t in tables] != ["uid", "mid", "cat"]:
            raise DataError("DIEN data feeds the tables uid, mid, cat (model.name=dien)")
        self.data, self.tables, self.global_batch, self.seed = dataset, tables, global_batch, seed
        self.shuffle, self.use_history = shuffle, use_history
        self.max_history = (tables[1].bags_per_sample - 1) // 2
        for name, spec, ids in (("uid", tables[0], (dataset.train.uid, dataset.test.uid)),
                                ("mid", tables[1], (dataset.train.mid, dataset.train.hist_mid, dataset.test.mid,
                                                    dataset.test.hist_mid, dataset.pool_mid)),
                                ("cat", tables[2], (dataset.train.cat, dataset.train.hist_cat, dataset.test.cat,
                                                    dataset.test.hist_cat, dataset.pool_cat))):
            top = max((int(x.max()) for x in ids if x.size), default=0)
            if top >= spec.num_rows:
                raise DataError(f"{dataset.description}: {name} id {top} needs {top + 1} rows, but table {name} has "
                                f"{spec.num_rows} (model.table_sizes / model.max_rows too small for this data)")
        self.steps_per_epoch = len(dataset.train) // global_batch
        self.notes = list(dataset.notes)
        self.exact_history = 0  # > 0: pad (and cut) every history to exactly this many positions
        self._orders: dict[int, np.ndarray] = {}

    # ---- order ----

    def _sorted_buffers(self, samples: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Within every buffer of 20 global batches, longest history first (stable)."""
        size = SORT_BUFFER_BATCHES * self.global_batch
        out = samples.copy()
        for lo in range(0, samples.size, size):
            chunk = samples[lo : lo + size]
            out[lo : lo + size] = chunk[np.argsort(-lengths[chunk], kind="stable")]
        return out

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            n = len(self.data.train)
            if self.shuffle:
                rng = np.random.Generator(np.random.Philox(key=[self.seed & (2**64 - 1), 0xD1E40000 + epoch]))
                order = rng.permutation(n)
            else:
                order = np.arange(n)
            self._orders[epoch] = self._sorted_buffers(order, self.data.train.history_lengths)
            while len(self._orders) > 2:
                self._orders.pop(min(self._orders))
        return self._orders[epoch]

    def _test_order(self) -> np.ndarray:
        if -1 not in self._orders:
            test = self.data.test
            self._orders[-1] = self._sorted_buffers(np.arange(len(test)), test.history_lengths)
        return self._orders[-1]

    def position(self, step: int) -> dict:
        epoch, b = divmod(step, max(self.steps_per_epoch, 1))
        return {"source": "dien", "path": self.data.description, "epoch": epoch, "batch_in_epoch": b,
                "steps_per_epoch": self.steps_per_epoch, "rows_consumed": step * self.global_batch,
                "seed": self.seed, "shuffle": self.shuffle}

    def eval_batches(self, split: str) -> int:
        return -(-len(self.data.test) // self.global_batch)

    # ---- batches ----

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1, split: str = "train") -> Batch:
        local = self.global_batch // world_size
        if split == "train":
            if self.steps_per_epoch == 0:
                raise DataError(f"{self.data.description}: {len(self.data.train)} training samples, fewer than one "
                                f"global batch of {self.global_batch} (lower train.batch_size)")
            epoch, b = divmod(step, self.steps_per_epoch)
            rows = self.epoch_order(epoch)[b * self.global_batch : (b + 1) * self.global_batch]
            return self._build(self.data.train, rows, rank * local, local, None, salt=(epoch, 0))
        order = self._test_order()
        pos = step * self.global_batch + np.arange(self.global_batch)
        valid = pos < order.size
        rows = order[np.where(valid, pos, 0)]
        return self._build(self.data.test, rows, rank * local, local, valid[rank * local : (rank + 1) * local],
                           salt=None)

    def _build(self, samples: DienSamples, rows: np.ndarray, start: int, count: int, valid, salt) -> Batch:
        lengths_all = np.minimum(samples.history_lengths[rows], self.max_history) if self.use_history else \
            np.zeros(rows.size, dtype=np.int64)
        if self.exact_history:
            lengths_all = np.minimum(lengths_all, self.exact_history)
        steps = self.exact_history or (int(lengths_all.max()) if rows.size else 0)  # the global batch's longest
        mine = rows[start : start + count]
        lengths = lengths_all[start : start + count]
        positions = np.arange(steps)
        present = positions[None, :] < lengths[:, None]  # [B, steps]
        index = samples.offsets[mine + 1][:, None] - lengths[:, None] + positions[None, :]
        index = np.where(present, index, 0)
        hist_mid = samples.hist_mid[index] if samples.hist_mid.size else np.zeros_like(index)
        hist_cat = samples.hist_cat[index] if samples.hist_cat.size else np.zeros_like(index)
        with_negatives = salt is not None
        if with_negatives:
            neg_mid, neg_cat = self._negatives(hist_mid, mine, salt)
        else:
            neg_mid = neg_cat = np.zeros_like(hist_mid)
        neg_present = present if with_negatives else np.zeros_like(present)
        mask = np.concatenate([np.ones((count, 1), dtype=bool), present, neg_present], axis=1)
        mids = np.concatenate([samples.mid[mine][:, None], hist_mid, neg_mid], axis=1)[mask]
        cats = np.concatenate([samples.cat[mine][:, None], hist_cat, neg_cat], axis=1)[mask]
        bags = 1 + 2 * steps
        per_bag = mask.reshape(-1).astype(np.int64)
        lengths_flat = torch.from_numpy(np.concatenate([np.ones(count, dtype=np.int64), per_bag, per_bag]))
        sparse = KeyedBags(keys=("uid", "mid", "cat"), bags_per_key=(1, bags, bags), batch_size=count,
                           lengths=lengths_flat,
                           values=torch.from_numpy(np.concatenate([samples.uid[mine], mids, cats])))
        return Batch(dense=torch.zeros(count, 0), labels=torch.from_numpy(samples.labels[mine].astype(np.float32)),
                     sparse=sparse, valid=None if valid is None else torch.from_numpy(valid))

    def _negatives(self, hist_mid: np.ndarray, samples: np.ndarray, salt) -> tuple[np.ndarray, np.ndarray]:
        """One sampled negative per history position, never the position's own item (when the pool allows).
        Each pick is a hash of (seed, epoch, sample, position, attempt), so it does not depend on the rank."""
        pool_mid, pool_cat = self.data.pool_mid, self.data.pool_cat
        steps = hist_mid.shape[1]
        keys = (samples.astype(np.uint64)[:, None] * np.uint64(4096) + np.arange(steps, dtype=np.uint64)[None, :])
        base = (self.seed & 0xFFFFFFFF) * 0x100000001B3 + (salt[0] + 1) * 0x9E3779B97F4A7C15
        picks = _hash_index(keys, base, pool_mid.size)
        for attempt in range(1, 9):  # redraw the few that hit the position's own item
            clash = pool_mid[picks] == hist_mid
            if not clash.any():
                break
            picks[clash] = _hash_index(keys[clash], base + attempt * 0xBF58476D1CE4E5B9, pool_mid.size)
        return pool_mid[picks], pool_cat[picks]


def _hash_index(keys: np.ndarray, salt: int, size: int) -> np.ndarray:
    """A fixed pseudo-random index in [0, size) per key (splitmix64 finaliser)."""
    x = keys.astype(np.uint64) + np.uint64(salt & (2**64 - 1))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x % np.uint64(size)).astype(np.int64)
