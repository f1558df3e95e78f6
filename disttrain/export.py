"""Compatibility: the import path the docs show (`disttrain.export.load_exported`). The code lives in
`disttrain.serving.export` and `disttrain.serving.reference_import`."""

from disttrain.serving.export import EXPORT_FORMAT, export_model, load_exported, plain_model, unsharded_state
from disttrain.serving.reference_import import import_reference, read_reference

__all__ = ["EXPORT_FORMAT", "export_model", "import_reference", "load_exported", "plain_model", "read_reference",
           "unsharded_state"]
