"""One place that turns `data.*` into a batch source, and the shapes a dataset imposes on the model."""

from __future__ import annotations

import os
from pathlib import Path

from disttrain import config as config_mod
from disttrain.embedding import EmbeddingTableSpec
from disttrain.errors import ConfigError, DataError

SYNTHETIC_EVAL_BATCHES = 8


def apply_data_shapes(cfg: config_mod.Config) -> config_mod.Config:
    """For a processed dataset: its table sizes (unless model.table_sizes is set), its dense width, and
    train.steps from train.epochs. In place and idempotent; returns `cfg`."""
    if cfg.model.name == "dien":
        return _apply_dien_shapes(cfg)
    if cfg.data.source != "criteo":
        return cfg
    from disttrain.data.criteo import open_dataset

    info = open_dataset(cfg.data.path, verify="size")
    rows = info.table_rows
    if not cfg.model.table_sizes:
        cfg.model.table_sizes = list(rows)
    elif len(cfg.model.table_sizes) != len(rows):
        raise ConfigError(f"model.table_sizes: {len(cfg.model.table_sizes)} tables, but {cfg.data.path} has "
                          f"{len(rows)} categorical columns; expected {len(rows)} sizes (or none: the data's)")
    cfg.data.num_dense = info.num_dense
    if cfg.train.epochs:
        lo, hi = info.split("train")
        per_epoch = (hi - lo) // cfg.train.batch_size
        if per_epoch == 0:
            raise ConfigError(f"train.batch_size: got {cfg.train.batch_size}, more than the {hi - lo} training rows "
                              f"of {cfg.data.path}")
        cfg.train.steps = max(1, round(cfg.train.epochs * per_epoch))
    return cfg


def _apply_dien_shapes(cfg: config_mod.Config) -> config_mod.Config:
    if cfg.data.source == "dien":
        from disttrain.data.dien import count_samples, vocab_rows

        if not cfg.model.table_sizes:
            cfg.model.table_sizes = list(vocab_rows(cfg.data.path))
        train_samples = count_samples(cfg.data.path)
    else:
        train_samples = cfg.data.synthetic_samples // 2 * 2
    if cfg.train.epochs:
        per_epoch = train_samples // cfg.train.batch_size
        if per_epoch == 0:
            raise ConfigError(f"train.batch_size: got {cfg.train.batch_size}, more than the {train_samples} training "
                              "samples")
        cfg.train.steps = max(1, round(cfg.train.epochs * per_epoch))
    return cfg


def _dien_source(cfg: config_mod.Config, tables: list[EmbeddingTableSpec]):
    from disttrain.data.dien import DienData, generate, open_dien

    if cfg.data.source == "dien":
        dataset = open_dien(cfg.data.path)
    else:
        users, items, cats = (t.num_rows for t in tables)
        dataset = generate(users=users, items=items, cats=cats, train_samples=cfg.data.synthetic_samples,
                           seed=cfg.train.seed, max_history=(tables[1].bags_per_sample - 1) // 2)
    return DienData(dataset, tables, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
                    shuffle=cfg.data.shuffle, use_history=cfg.data.use_history)


def _agreed(comm, open_data):
    """`open_data()` on every rank; if it fails with a DataError on any rank, every rank raises the first
    rank's error (one line, the same everywhere) instead of some ranks waiting in a collective."""
    error, result = None, None
    try:
        result = open_data()
    except DataError as exc:
        error = str(exc)
    errors = [e for e in comm.all_gather_object(error) if e]
    if errors:
        raise DataError(errors[0])
    return result


def make_source(cfg: config_mod.Config, tables: list[EmbeddingTableSpec], *, comm, rank: int):
    """The batch source for this config: `SyntheticCTR`, `CriteoData` (checked against its metadata first) or
    `DienData` (the benchmark's files, or generated for data.source=synthetic)."""
    if cfg.model.name == "dien":
        return _agreed(comm, lambda: _dien_source(cfg, tables))
    if cfg.data.source == "synthetic":
        from disttrain.data.synthetic import SyntheticCTR

        return SyntheticCTR(
            tables,
            num_dense=cfg.data.num_dense,
            global_batch=cfg.train.batch_size,
            seed=cfg.train.seed,
            distribution=cfg.data.distribution,
            zipf_exponent=cfg.data.zipf_exponent,
            multi_hot_max=cfg.data.multi_hot_max,
        )
    from disttrain.data.criteo import VERIFIED_ENV, CriteoData, open_dataset

    path = Path(cfg.data.path)
    # The full check once: by the launcher (which says so in the environment) or here by rank 0 for all.
    checksum = cfg.data.verify == "checksum" and os.environ.get(VERIFIED_ENV) != str(path.resolve())
    info = _agreed(comm, lambda: open_dataset(path, verify="checksum" if checksum and rank == 0 else "size"))
    return CriteoData(info, tables, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
                      shuffle=cfg.data.shuffle, shuffle_window=cfg.data.shuffle_window)


def eval_batches(cfg: config_mod.Config, source, split: str) -> int:
    """Global batches in one evaluation of `split`."""
    wanted = cfg.data.eval_batches
    if cfg.data.source == "synthetic" and cfg.model.name != "dien":
        return SYNTHETIC_EVAL_BATCHES if wanted < 0 else wanted
    available = source.eval_batches(split)
    return available if wanted < 0 else min(wanted, available)


def eval_splits(cfg: config_mod.Config) -> tuple[str, str]:
    """(the split evaluated during training, the split of the final evaluation)."""
    if cfg.model.name == "dien":  # the benchmark has train and test only
        return "test", "test"
    return ("eval", "eval") if cfg.data.source == "synthetic" else ("val", "test")
