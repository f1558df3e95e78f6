"""Users' own models and data sources: by import path (`model.name=package.module:attribute`) or by an installed
package's entry point (groups `disttrain.models` and `disttrain.data_sources`).

An import path is resolved the way `python -m` resolves modules: the current directory first, then PYTHONPATH
and the installed packages, so a module beside the job (or in `ray job submit`'s working directory) is found by
the launcher and by every worker alike. Any failure is one line naming the key, the path and the reason.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata

from disttrain.errors import ConfigError

MODEL_GROUP = "disttrain.models"
SOURCE_GROUP = "disttrain.data_sources"


def is_import_path(name: str) -> bool:
    """`package.module:attribute`: a dotted module, a colon, an attribute."""
    module, sep, attribute = name.partition(":")
    return bool(sep and module and attribute) and all(part.isidentifier() for part in [*module.split("."), attribute])


def import_object(path: str, *, key: str):
    """The object an import path names; a ConfigError naming `key` when the module or attribute is missing, or
    importing the module fails."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` has it: a module beside the job is found
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{key}: got {path!r}, but {exc.name or module_name} cannot be imported ({exc}); expected a "
                          "module in the current directory, on PYTHONPATH or installed") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing: say how, in one line
        raise ConfigError(f"{key}: importing {module_name} for {path!r} failed: {type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"{key}: got {path!r}, but {module_name} has no attribute {attribute!r}") from None


def entry_points(group: str) -> dict:
    """Installed packages' entry points of `group`, by name."""
    try:
        return {ep.name: ep for ep in metadata.entry_points(group=group)}
    except Exception:  # noqa: BLE001 - broken metadata of another package must not stop a run
        return {}


def resolve(name: str, *, key: str, group: str, kind: type, what: str, builtin: dict) -> object:
    """`name` as a registry entry of type `kind`: a built-in, an installed entry point, or an import path naming
    one (or a function of no arguments returning one)."""
    if name in builtin:
        return builtin[name]
    installed = entry_points(group)
    if name in installed:
        try:
            found, where = installed[name].load(), f"entry point {name!r} ({installed[name].value})"
        except Exception as exc:  # noqa: BLE001 - an installed plugin that fails to load
            raise ConfigError(f"{key}: loading entry point {name!r} ({installed[name].value}) failed: "
                              f"{type(exc).__name__}: {exc}") from None
    elif is_import_path(name):
        found, where = import_object(name, key=key), repr(name)
    else:
        known = ", ".join([*builtin, *installed])
        raise ConfigError(f"{key}: got {name!r}, expected one of {known}, or package.module:attribute naming {what}")
    if not isinstance(found, kind) and callable(found):
        try:
            found = found()
        except Exception as exc:  # noqa: BLE001 - the user's factory failed: one line
            raise ConfigError(f"{key}: calling {where} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(found, kind):
        article = "an" if type(found).__name__[0].lower() in "aeiou" else "a"
        raise ConfigError(f"{key}: {where} is {article} {type(found).__name__}, expected {what} (a {kind.__name__}, "
                          "or a function returning one)")
    return found


def plugin_names(group: str) -> list[str]:
    return sorted(entry_points(group))

