"""The schema of `disttrain data prepare`: which column is the label, which are dense features (and how each is
transformed), which are categorical (by vocabulary or by hash), and which of those are multi-hot lists.

A schema file (YAML, any subset of the keys below; the order of the features is the order of the tables)::

    label: clicked
    dense:
      age: standardize            # none | log1p | standardize | minmax (statistics from the training split)
      price: {transform: log1p, fill: zero, missing_indicator: true}   # + a 0/1 feature price_missing
    categorical:
      country: {missing: other}   # a vocabulary of the training split's values (min_count 1), id 0 = other
      user_id: {hash: 1000000}    # a stable 64-bit hash of the value, modulo 1,000,000
      item_id: {min_count: 2}
      tags: {multi_hot: {max_length: 8, delimiter: "|", overflow: truncate}, pooling: mean}
    id_order: frequency           # vocabulary ids: most frequent first (frequency) or in order of first appearance

Missing values (an empty CSV field, NaN, NA, N/A, null or None in a dense column; an empty field or a null in a
categorical one) are policy, not zeros: statistics are taken over the present values only; a dense column's
missing entries are stored as its `fill` (`mean`, the default: the mean of the present training values after the
transform, 0 for standardize; `zero`; or a number), both in the transformed units the model sees, and
`missing_indicator: true` adds a 0/1 feature `<name>_missing` (after all the dense columns). A categorical column's
missing value is `missing: own_id` (the default: the empty value is a value like any other, with an id of its
own once seen `min_count` times in training) or `missing: other` (id 0, shared with rare and unseen values).

Simple cases need no file: `--label-column`, `--dense-columns`, `--sparse-columns`, `--multi-hot-columns` build
the same schema. Every value read here is checked: a wrong key or value is one line naming the file, the key,
the value and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from disttrain.config_tree import yaml_load
from disttrain.errors import DataError

TRANSFORMS = ("none", "log1p", "standardize", "minmax")
FILLS = ("mean", "zero")  # or a number
CATEGORICAL_MISSING = ("own_id", "other")
INDICATOR_SUFFIX = "_missing"
OVERFLOW = ("truncate", "error")
POOLINGS = ("sum", "mean")
ID_ORDERS = ("frequency", "first-seen")


@dataclass(frozen=True)
class Dense:
    name: str
    transform: str = "none"
    fill: str | float = "mean"  # a missing entry's stored value: mean (of the present, transformed), zero, a number
    missing_indicator: bool = False  # add a 0/1 feature `<name>_missing`

    @property
    def indicator(self) -> str:
        return self.name + INDICATOR_SUFFIX

    def to_json(self) -> dict:
        return {"name": self.name, "transform": self.transform, "fill": self.fill,
                "missing_indicator": self.missing_indicator}


@dataclass(frozen=True)
class Categorical:
    name: str
    hash_rows: int = 0  # > 0: id = hash64(value) % hash_rows; 0: a vocabulary
    raw: bool = False  # id = hash64(value) as a signed 64-bit id, no vocabulary, no modulo (dynamic tables)
    min_count: int = 1  # vocabulary: values seen this often in the training split get an id; others id 0
    multi_hot: bool = False
    max_length: int = 0  # multi-hot: values kept per row (0: no limit)
    delimiter: str = "|"  # multi-hot from text: the separator inside the field
    overflow: str = "truncate"  # multi-hot rows longer than max_length: truncate (and count) or error
    pooling: str = "sum"
    missing: str = "own_id"  # single-hot: the empty value's id: its own (a value like any other) or 0 (other)

    def to_json(self) -> dict:
        out = {"name": self.name, "pooling": self.pooling, **({} if self.multi_hot else {"missing": self.missing})}
        out.update({"raw": True} if self.raw else {"hash": self.hash_rows} if self.hash_rows
                   else {"min_count": self.min_count})
        if self.multi_hot:
            out["multi_hot"] = {"max_length": self.max_length, "delimiter": self.delimiter,
                                "overflow": self.overflow}
        return out


@dataclass(frozen=True)
class Schema:
    label: str
    dense: tuple[Dense, ...] = ()
    categorical: tuple[Categorical, ...] = ()
    id_order: str = "frequency"
    source: str = "flags"  # where it came from, for messages

    @property
    def columns(self) -> list[str]:
        return [self.label, *(d.name for d in self.dense), *(c.name for c in self.categorical)]

    @property
    def dense_names(self) -> list[str]:
        """The dense features written: the dense columns, then the missing indicators asked for."""
        return [*(d.name for d in self.dense), *(d.indicator for d in self.dense if d.missing_indicator)]

    def to_json(self) -> dict:
        return {"label": self.label, "dense": [d.to_json() for d in self.dense],
                "categorical": [c.to_json() for c in self.categorical], "id_order": self.id_order}


def _choice(where: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise DataError(f"{where}: got {value!r}, expected one of {', '.join(choices)}")
    return value


def _count(where: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"{where}: got {value!r}, expected an integer >= {minimum}")
    return value


def _keys(where: str, spec, allowed: tuple[str, ...]) -> dict:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise DataError(f"{where}: got {spec!r}, expected a mapping")
    unknown = [k for k in spec if k not in allowed]
    if unknown:
        raise DataError(f"{where}.{unknown[0]}: unknown key (known keys here: {', '.join(allowed)})")
    return spec


def categorical(name: str, spec, where: str) -> Categorical:
    spec = _keys(where, spec, ("hash", "min_count", "raw", "multi_hot", "pooling", "missing"))
    raw = spec.get("raw", False)
    if not isinstance(raw, bool):
        raise DataError(f"{where}.raw: got {raw!r}, expected true or false")
    if raw and ("hash" in spec or "min_count" in spec):
        raise DataError(f"{where}: raw with {'hash' if 'hash' in spec else 'min_count'}; expected raw alone (raw: the "
                        "value's 64-bit hash is the id, for a dynamic table)")
    hash_rows = _count(f"{where}.hash", spec.get("hash", 0), minimum=0)
    if hash_rows > 2**31 - 1:
        raise DataError(f"{where}.hash: got {hash_rows}, expected at most 2147483647 rows")
    if hash_rows and "min_count" in spec:
        raise DataError(f"{where}: both hash and min_count; expected one (hash: no vocabulary)")
    multi = spec.get("multi_hot")
    multi_spec = _keys(f"{where}.multi_hot", multi if multi not in (True, False) else {},
                       ("max_length", "delimiter", "overflow"))
    delimiter = multi_spec.get("delimiter", "|")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise DataError(f"{where}.multi_hot.delimiter: got {delimiter!r}, expected one character")
    return Categorical(
        name=name, hash_rows=hash_rows, raw=raw, min_count=_count(f"{where}.min_count", spec.get("min_count", 1), minimum=1),
        multi_hot=bool(multi), max_length=_count(f"{where}.multi_hot.max_length", multi_spec.get("max_length", 0),
                                                 minimum=0),
        delimiter=delimiter, overflow=_choice(f"{where}.multi_hot.overflow", multi_spec.get("overflow", "truncate"),
                                              OVERFLOW),
        pooling=_choice(f"{where}.pooling", spec.get("pooling", "sum"), POOLINGS),
        missing=_categorical_missing(where, spec, hashed=bool(hash_rows or raw)))


def _categorical_missing(where: str, spec: dict, *, hashed: bool) -> str:
    missing = _choice(f"{where}.missing", spec.get("missing", "own_id"), CATEGORICAL_MISSING)
    if "missing" in spec and spec.get("multi_hot"):
        raise DataError(f"{where}.missing: got {missing!r} on a multi_hot column; expected no missing key there "
                        "(a missing list is an empty bag)")
    if missing == "other" and hashed:
        raise DataError(f"{where}.missing: got 'other' with {'raw' if spec.get('raw') else 'hash'}; expected own_id "
                        "(only a vocabulary has an id 0 of its own for other values)")
    return missing


def dense_feature(name: str, spec, where: str) -> Dense:
    """`age: standardize` (the transform alone) or `age: {transform: standardize, fill: mean, missing_indicator:
    true}`."""
    if not isinstance(spec, dict):
        return Dense(name, _choice(where, "none" if spec is None else spec, TRANSFORMS))
    spec = _keys(where, spec, ("transform", "fill", "missing_indicator"))
    indicator = spec.get("missing_indicator", False)
    if not isinstance(indicator, bool):
        raise DataError(f"{where}.missing_indicator: got {indicator!r}, expected true or false")
    return Dense(name, _choice(f"{where}.transform", spec.get("transform", "none"), TRANSFORMS),
                 _fill(f"{where}.fill", spec.get("fill", "mean")), indicator)


def _fill(where: str, value) -> str | float:
    if value in FILLS:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: got {value!r}, expected mean, zero or a finite number (the stored value of a "
                        "missing entry)")
    return float(value)


def _features(where: str, spec) -> list[tuple[str, object]]:
    if spec is None:
        return []
    if isinstance(spec, dict):
        return [(str(k), v) for k, v in spec.items()]
    if isinstance(spec, list) and all(isinstance(x, str) for x in spec):
        return [(x, None) for x in spec]
    raise DataError(f"{where}: got {spec!r}, expected a mapping of column -> options (or a list of columns)")


def load_schema(path: str | Path) -> Schema:
    """A schema file, checked."""
    path = Path(path)
    try:
        data = yaml_load(path.read_text())
    except OSError as exc:
        raise DataError(f"--schema {path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - YAML errors: one line with the position
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise DataError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    data = _keys(str(path), data, ("label", "dense", "categorical", "id_order"))
    if not isinstance(data.get("label"), str) or not data["label"]:
        raise DataError(f"{path}: label: got {data.get('label')!r}, expected the label column's name")
    dense_features = [dense_feature(name, spec, f"{path}: dense.{name}")
                      for name, spec in _features(f"{path}: dense", data.get("dense"))]
    cats = [categorical(name, spec, f"{path}: categorical.{name}")
            for name, spec in _features(f"{path}: categorical", data.get("categorical"))]
    return checked(Schema(data["label"], tuple(dense_features), tuple(cats),
                          _choice(f"{path}: id_order", data.get("id_order", "frequency"), ID_ORDERS), str(path)))


def from_flags(*, label: str, dense: str, sparse: str, multi_hot: str, transform: str, hash_rows: int,
               min_count: int, delimiter: str, max_length: int, id_order: str, raw_ids: bool = False) -> Schema:
    """The schema the simple flags describe (every column alike)."""
    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    if not label:
        raise DataError("--label-column: missing; expected the label column's name (or --schema FILE)")
    multi = split(multi_hot)
    if raw_ids and hash_rows:
        raise DataError(f"--raw-ids with --hash-rows {hash_rows}; expected one (raw ids are not folded)")
    spec = {"raw": True} if raw_ids else {"hash": hash_rows} if hash_rows else {"min_count": min_count}
    multi_spec = {"multi_hot": {"max_length": max_length, "delimiter": delimiter}}
    cats = [categorical(n, {**spec, **(multi_spec if n in multi else {})}, f"--sparse-columns {n}")
            for n in split(sparse) + [m for m in multi if m not in split(sparse)]]
    dense_features = tuple(Dense(n, _choice("--dense-transform", transform, TRANSFORMS)) for n in split(dense))
    return checked(Schema(label, dense_features, tuple(cats), _choice("--id-order", id_order, ID_ORDERS)))


def checked(schema: Schema) -> Schema:
    if not schema.categorical and not schema.dense:
        raise DataError(f"{schema.source}: no features; expected at least one dense or categorical column")
    seen: set[str] = set()
    for name in schema.columns:
        if name in seen:
            raise DataError(f"{schema.source}: column {name!r} is used twice; expected each column once")
        seen.add(name)
    for d in schema.dense:
        if d.missing_indicator and d.indicator in seen:
            raise DataError(f"{schema.source}: dense.{d.name}.missing_indicator adds the feature {d.indicator!r}, "
                            "which is also a column of the schema; expected distinct names")
    return schema


@dataclass
class Counters:
    """What a pass over the inputs counted, per feature."""

    truncated_rows: dict[str, int] = field(default_factory=dict)
    truncated_values: dict[str, int] = field(default_factory=dict)

    def add(self, other: Counters) -> None:
        for mine, theirs in ((self.truncated_rows, other.truncated_rows),
                             (self.truncated_values, other.truncated_values)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


def load_schema_json(data: dict, source: str) -> Schema:
    """The schema a prepared directory's meta.json holds (`Schema.to_json`)."""
    try:
        def options(feature: dict) -> dict:
            return {k: v for k, v in feature.items() if k != "name"}

        cats = tuple(categorical(c["name"], options(c), f"{source}: {c['name']}") for c in data["categorical"])
        dense_features = tuple(dense_feature(d["name"], options(d), f"{source}: {d['name']}") for d in data["dense"])
        return checked(Schema(data["label"], dense_features, cats, data.get("id_order", "frequency"), source))
    except (KeyError, TypeError) as exc:
        raise DataError(f"{source}: schema incomplete (missing {exc})") from None
