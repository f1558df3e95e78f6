"""Reading DCP's files as data (see `safe_read`): its pickled `.metadata` through an unpickler that knows only
DCP's plain records, and a reader that opens only the storage locations the manifest lists.

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
    return metadata


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
