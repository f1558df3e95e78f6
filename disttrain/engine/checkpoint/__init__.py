"""Sharded checkpoints: save, verify, resume and reshard (any world size, any plan).

    layout    names on disk, the commit marker, the complete checkpoints of a directory
    locate    which checkpoint `train.resume` or a command means (local or object storage)
    remote    checkpoints on object storage: the commit order, local copies
    save      every rank writes its shards, rank 0 commits (atomic rename)
    verify    files against the manifest, the saved model against this run's
    load      each rank copies the saved pieces that overlap its shards (resharding)
"""

from disttrain.engine.checkpoint.layout import (
    FORMAT,
    MANIFEST,
    META,
    STEP_PREFIX,
    TMP_PREFIX,
    committed_checkpoints,
    dense_parameters,
    step_dir_name,
)
from disttrain.engine.checkpoint.load import Loaded, load_checkpoint
from disttrain.engine.checkpoint.locate import find_checkpoint
from disttrain.engine.checkpoint.save import save_checkpoint
from disttrain.engine.checkpoint.verify import check_fits, read_manifest, verify, verify_shared

__all__ = ["FORMAT", "MANIFEST", "META", "STEP_PREFIX", "TMP_PREFIX", "Loaded", "check_fits",
           "committed_checkpoints", "dense_parameters", "find_checkpoint", "load_checkpoint", "read_manifest",
           "save_checkpoint", "step_dir_name", "verify", "verify_shared"]
