"""The data-source contract: what the engine asks of any source of batches, and how a source is registered.

A source hands out *global* batches by number: batch `step` of the training order, cut into `world_size` equal
slices, one per rank, so 1 rank and N ranks see the same global batches, and a resumed run continues where it
stopped. Held-out splits are read the same way. The engine never asks which source it has: it reads the
attributes and methods below.

    held_out          (split evaluated during training, split of the final evaluation)
    steps_per_epoch   global batches per pass over the training split (0: generated data has no epochs)
    notes             lines worth printing once at the start (unknown ids, skipped rows, ...)
    batch(step, rank=, world_size=, split=)   this rank's slice of global batch `step` of `split`
    eval_batches(split, wanted)               global batches one evaluation of `split` takes
    position(step)                            where the reader stands after `step` batches (saved in checkpoints)
    restore(saved, step)                      continue after `step`; a note when `saved` came from other data

Sources of models with a behaviour history (`ModelSpec.history_positions`) also have `exact_history`: > 0 pads
(and cuts) every history to exactly that many positions (`disttrain infer --exact-max-length`).

A `SourceSpec` registers a source: how to open it from the config, what a dataset imposes on the config (table
sizes, dense width, steps per epoch), whether it needs `data.path`, and the checks a launcher runs once before
any worker starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from disttrain.batch import Batch
from disttrain.config import Config


class DataSource(Protocol):
    held_out: tuple[str, str]
    steps_per_epoch: int
    notes: list[str]

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1, split: str = "train") -> Batch: ...

    def eval_batches(self, split: str, wanted: int = -1) -> int: ...

    def position(self, step: int) -> dict: ...

    def restore(self, saved: dict, step: int) -> str | None: ...


def _nothing(cfg: Config) -> None:
    return None


@dataclass(frozen=True)
class SourceSpec:
    name: str
    # open(cfg, tables, comm, rank) -> DataSource. Collective: every rank calls it (errors agreed on).
    open: Callable
    # What the dataset imposes on the config, in place and idempotent: table sizes (unless model.table_sizes is
    # set), the dense width, train.steps from train.epochs.
    shape: Callable[[Config], None] = _nothing
    # Non-empty: data.path must be set, and this says what it must hold.
    path: str = ""
    # Whether train.epochs means anything here (generated CTR data has no epochs).
    epochs: bool = True
    # Checks the launcher runs once before any worker starts (e.g. every checksum of a processed directory).
    preflight: Callable[[Config], None] = _nothing


def same_data(saved: dict, now: dict) -> bool:
    """Whether a checkpoint's data position (`position()`) and this run's name the same data: the same source and
    fingerprint (a prepared directory's checksums), and the same path where a source has no fingerprint."""
    keys = ("source", "fingerprint") if saved.get("fingerprint") or now.get("fingerprint") else ("source", "path")
    return all(saved.get(k) == now.get(k) for k in keys)


def resume_note(saved: dict, now: dict) -> str | None:
    """A line for a resume whose checkpoint was trained on other data than this run reads (None: the same)."""
    if same_data(saved, now):
        return None
    return (f"resume: the checkpoint was trained on {saved.get('path') or saved.get('source')} (fingerprint "
            f"{saved.get('fingerprint')}); this run reads {now.get('path') or now.get('source')} (fingerprint "
            f"{now.get('fingerprint')}) from its epoch {now.get('epoch', 0)}, batch "
            f"{now.get('batch_in_epoch', now.get('batches_consumed', 0))}")


def epochs_to_steps(cfg: Config, train_rows: int, what: str) -> None:
    """train.epochs -> train.steps for a training split of `train_rows` samples."""
    if not cfg.train.epochs:
        return
    from disttrain.errors import ConfigError

    per_epoch = train_rows // cfg.train.batch_size
    if per_epoch == 0:
        raise ConfigError(f"train.batch_size: got {cfg.train.batch_size}, more than the {train_rows} training "
                          f"{what}")
    cfg.train.steps = max(1, round(cfg.train.epochs * per_epoch))


def agreed(comm, open_data: Callable):
    """`open_data()` on every rank; if it fails with a DataError on any rank, every rank raises the first
    rank's error (one line, the same everywhere) instead of some ranks waiting in a collective."""
    from disttrain.errors import DataError

    error, result = None, None
    try:
        result = open_data()
    except DataError as exc:
        error = str(exc)
    errors = [e for e in comm.all_gather_object(error) if e]
    if errors:
        raise DataError(errors[0])
    return result
