"""Merging parsed YAML and dotted command-line overrides into a tree of typed dataclasses, checking every value
against its annotation on the way (one line naming the key's full path on a mismatch).

YAML 1.2 booleans: only true/false are booleans, so `launch.allocator=off` stays the string 'off'.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

import yaml

from disttrain.errors import ConfigError


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where installed: 3-4x faster
    """YAML 1.2 booleans: only true/false, so `launch.allocator=off` stays the string 'off'."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass: safe constructors only)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: got {value!r}, expected a list of {_type_name(item_tp)}")
        return [_coerce(f"{path}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: got {value!r}, expected a mapping of {_type_name(key_tp)} to {_type_name(val_tp)}")
        return {_coerce(f"{path}", k, key_tp): _coerce(f"{path}.{k}", v, val_tp) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        for option in options:
            try:
                return _coerce(path, value, option)
            except ConfigError:
                continue
        names = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"{path}: got {value!r} ({type(value).__name__}), expected {names}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):  # YAML's .nan / .inf, wherever they come from
        raise ConfigError(f"{path}: got {value!r}, expected a finite number")
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        raise ConfigError(f"{path}: got {value!r}, expected {_type_name(tp)}")
    if not isinstance(value, tp):
        raise ConfigError(f"{path}: got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    return value


def merge(node: Any, data: dict[str, Any], prefix: str) -> None:
    """Apply a (possibly partial) nested mapping onto a dataclass instance, in place."""
    hints = typing.get_type_hints(type(node))
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(node))
            raise ConfigError(f"{path}: unknown key (known keys here: {known})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: got {value!r}, expected a section (mapping)")
            merge(getattr(node, key), value, f"{path}.")
        else:
            setattr(node, key, _coerce(path, value, tp))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.batch_size=4096` -> (["train", "batch_size"], 4096); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.batch_size=4096")
    key, raw = text.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.problem})") from None
    if value is None:
        value = ""
    return key.strip().split("."), value


def nest(parts: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(parts):
        out = {part: out}
    return out
