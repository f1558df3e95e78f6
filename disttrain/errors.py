"""The one error type users see: a sentence naming the key, value and what was expected."""


class DisttrainError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""


class ConfigError(DisttrainError):
    """A config key, value or file is wrong."""


class PlanError(DisttrainError):
    """The requested sharding cannot be built for these tables and this world size."""


class DataError(DisttrainError):
    """A batch or data file does not match the model (e.g. ids out of a table's range)."""


# Optional dependencies -> the extra that installs them (pyproject.toml [project.optional-dependencies]).
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "ray": "ray", "horovod": "horovod", "sklearn": "quality",
          "s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure"}


class MissingDependency(DisttrainError):
    """An optional dependency a verb or launcher needs is not installed."""


def install_hint(module: str) -> str:
    """How to install `module` where disttrain is installed (no `make`: a pip install has no Makefile)."""
    import sys

    root = module.split(".")[0]
    if root == "horovod":
        from importlib.util import find_spec

        spec = find_spec("disttrain.launchers")
        folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else "launchers"
        return (f"`bash {folder}/build_horovod.sh {sys.executable}` (builds Horovod 0.28.1 for this torch and "
                "installs it, a few minutes; in a clone: `make horovod`)")
    extra = EXTRAS.get(root)
    return f"`pip install 'disttrain[{extra}]'`" if extra else f"`pip install {root}`"


def missing(module: str, purpose: str) -> MissingDependency:
    """The one-line error for `purpose` needing `module`, which is not installed."""
    import sys

    root = module.split(".")[0]
    return MissingDependency(f"{purpose} needs {root}, which is not installed in {sys.prefix}; expected "
                             f"{install_hint(root)}")
