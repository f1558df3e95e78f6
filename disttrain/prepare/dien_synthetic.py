"""`disttrain data dien-synthetic`: DIEN samples with a planted sequential signal, written as the benchmark's files
(local_train_splitByUser, local_test_splitByUser, the three vocabulary pickles, item-info, reviews-info). The
directory appears only once complete."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

from disttrain.data.dien_files import TEST_FILE, TRAIN_FILE, VOCAB_FILES, DienDataset
from disttrain.data.dien_generate import generate
from disttrain.errors import DisttrainError


def write_synthetic(out: str | Path, *, samples: int, users: int, items: int, cats: int, max_history: int,
                    seed: int = 0, force: bool = False) -> DienDataset:
    """Generate and write a dataset into `out` (atomically: a hidden sibling renamed into place)."""
    for name, value, low in (("samples", samples, 0), ("users", users, 0), ("items", items, 1), ("cats", cats, 1),
                             ("max-history", max_history, 0)):
        if value <= low:
            raise DisttrainError(f"--{name}: got {value}, expected a larger positive number (items and categories "
                                 "reserve id 0 for the default)")
    out = Path(out)
    if out.exists() and not force:
        raise DisttrainError(f"--out: {out} exists; expected a new directory (or --force to replace it)")
    data = generate(users=users, items=items, cats=cats, train_samples=samples, seed=seed, max_history=max_history)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_files(data, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return data


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
