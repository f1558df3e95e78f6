"""Reading DCP's files as data (see `safe_read`): its pickled `.metadata` through an unpickler that knows only
DCP's plain records, a reader that opens only the storage locations the manifest lists, and tensors only.

DCP stores any value that is not a tensor as a "byte entry" and reads it back with `torch.load(weights_only=False)`
(`DefaultLoadPlanner.load_bytes`): a pickle that runs code. disttrain writes tensors only, so a byte entry is
refused twice: when the metadata is read (`read_dcp_metadata`), and by the load planner (`TensorsOnlyLoadPlanner`)
should one ever reach DCP another way.

Kept apart from `safe_read` because importing torch.distributed.checkpoint takes ~0.7 s: only a process that
loads a checkpoint pays it.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path, PurePosixPath

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo

from disttrain.errors import DataError

_DCP_RECORDS = {
    ("torch.distributed.checkpoint.metadata", name): getattr(dcp_metadata, name)
    for name in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
    if hasattr(dcp_metadata, name)
}
_ALLOWED = {
    **_DCP_RECORDS,
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # a layout by its name
    ("pathlib", "PosixPath"): PurePosixPath,  # the checkpoint id: kept as a plain path, never opened
    ("pathlib", "PurePosixPath"): PurePosixPath,
    **{("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
}


# BytesStorageMetadata is let through the unpickler (an empty record) so that `check_tensors_only` can name the
# byte entry; it is refused right after.


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a checkpoint's metadata never holds")
        return _ALLOWED[(module, name)]


def read_dcp_metadata(path: Path) -> dcp_metadata.Metadata:
    """A rank directory's `.metadata`, unpickled with nothing but DCP's own plain records allowed."""
    try:
        metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # noqa: BLE001 - anything that is not DCP's plain metadata
        raise DataError(f"{path}: not a plain torch.distributed.checkpoint metadata file ({exc}); nothing in it "
                        "was run") from None
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise DataError(f"{path}: holds a {type(metadata).__name__}, expected DCP Metadata")
    check_tensors_only(metadata, path)
    return metadata


def check_tensors_only(metadata: dcp_metadata.Metadata, path: Path) -> None:
    """Every entry of `metadata` describes a tensor: a byte entry would be unpickled by DCP, running its code."""
    entries = metadata.state_dict_metadata
    if not isinstance(entries, dict):
        raise DataError(f"{path}: its entries are a {type(entries).__name__}, expected a dict of tensors")
    for key, entry in entries.items():
        if isinstance(entry, dcp_metadata.BytesStorageMetadata):
            raise DataError(f"{path}: entry {key!r} is a byte entry; expected tensors only")
        if not isinstance(entry, dcp_metadata.TensorStorageMetadata):
            raise DataError(f"{path}: entry {key!r} is a {type(entry).__name__}; expected tensors only")


class TensorsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, refusing byte entries (which it would `torch.load(weights_only=False)`) instead of
    reading them. `where`: the rank directory, for the message."""

    def __init__(self, where: Path):
        super().__init__()
        self.where = where

    def load_bytes(self, read_item, value) -> None:
        raise DataError(f"{self.where / '.metadata'}: entry {read_item.dest_index.fqn!r} is a byte entry; expected "
                        "tensors only")


def refusal_in(exc: BaseException) -> DataError | None:
    """The DataError this module raised inside DCP, which wraps it in a CheckpointException; None if none."""
    if isinstance(exc, DataError):
        return exc
    failures = getattr(exc, "failures", None)
    wrapped = failures.values() if isinstance(failures, dict) else ()
    return next((pair[0] for pair in wrapped if isinstance(pair, tuple) and isinstance(pair[0], DataError)), None)


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with the metadata read as data and every storage location checked against `allowed`
    (the rank directory's files in the manifest)."""

    def __init__(self, path: Path, allowed: set[str]):
        super().__init__(str(path))
        self.directory, self.allowed = Path(path), allowed

    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        metadata = read_dcp_metadata(self.directory / ".metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        for info in (metadata.storage_data or {}).values():
            self._check_location(info)
        return metadata

    def _check_location(self, info) -> None:
        where = self.directory / ".metadata"
        if not isinstance(info, _StorageInfo):
            raise DataError(f"{where}: a storage entry of type {type(info).__name__}; expected a file location")
        if not isinstance(info.relative_path, str) or info.relative_path not in self.allowed:
            raise DataError(f"{where}: names {info.relative_path!r}; expected one of this rank directory's files in "
                            "the manifest")
        if not (isinstance(info.offset, int) and isinstance(info.length, int) and info.offset >= 0
                and info.length >= 0):
            raise DataError(f"{where}: a storage entry at offset {info.offset!r}, length {info.length!r}")
        if info.transform_descriptors:
            raise DataError(f"{where}: storage transforms {info.transform_descriptors!r}; disttrain writes none")
