"""One way in: a trained model opened for serving, whatever holds it. Every serving verb calls `open_model`.

    open_model(path, overrides, *, kinds, config, key, load)   -> Opened(kind, path, config, step, model, stored)
    kind_of(path)                                              what a path holds, told without reading it
    single_process(cfg)                                        the parallelized model on a world of one

The kinds (`KINDS`):

    checkpoint  a sharded checkpoint (a step_N directory or the directory holding them; local or on object
                storage), whatever world wrote it: its manifest and meta.json read as data, the model built once
                and planned for one process (every table whole), the checkpoint loaded into it (each file hashed
                once against the manifest, before any tensor in it is read), the loaded tensors handed to a plain
                copy of the same build
    export      a `disttrain export` file: the plain model's tensors and its config
    int8        a `disttrain quantize` output (its directory or its model_int8.pt): int8 layers and tables

Each gives the plain model in eval mode, its config (the stored one, or `config`, with `overrides` on top), its
step and the config's text as stored. A stored config that names code by import path is built only when
`overrides` name the same code (`disttrain.config.stored_config`); files are read with
`torch.load(weights_only=True)`; every refusal is one line.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from disttrain import config as config_mod
from disttrain.collectives import SingleProcess
from disttrain.engine.checkpoint import META, find_checkpoint, load_checkpoint, read_manifest, remote
from disttrain.engine.checkpoint.layout import EXPORT_FORMAT, dense_buffers, is_export
from disttrain.engine.checkpoint.verify import read_meta
from disttrain.errors import ConfigError, DataError
from disttrain.layers.dynamic_lookup import ServingEmbeddingBags
from disttrain.parallelize import Parallelized, parallelize
from disttrain.planning.build import build_model, build_plan
from disttrain.serving.int8_layers import FORMAT as INT8_FORMAT
from disttrain.serving.int8_layers import MODEL_FILE, int8_model, is_quantized, model_file
from disttrain.sharding.plan import ShardingPlan
from disttrain.storage import is_remote, local
from disttrain.tables import EmbeddingTableSpec

CHECKPOINT, EXPORT, INT8 = "checkpoint", "export", "int8"
KINDS = (CHECKPOINT, EXPORT, INT8)
EXPECTED = {
    CHECKPOINT: "a sharded checkpoint (a step_N directory holding manifest.json, or the directory holding them)",
    EXPORT: "a `disttrain export` file",
    INT8: f"a `disttrain quantize` output (a directory holding {MODEL_FILE})",
}


@dataclass
class Opened:
    """A trained model, opened."""

    kind: str  # one of KINDS
    path: str  # the step directory (its URL on object storage), the export file, the int8 model file
    config: config_mod.Config
    step: int
    model: nn.Module | None  # the plain model in eval mode; None when opened with load=False
    stored: str  # the config's YAML as the checkpoint or file holds it

    @property
    def tables(self) -> list[EmbeddingTableSpec]:
        """The model's tables, in feature order."""
        assert self.model is not None, "opened with load=False: no model, hence no tables"
        return self.model.tables


def open_model(path: str | Path, overrides: Sequence[str] | None = None, *, kinds: Sequence[str] = KINDS,
               config: str | None = None, key: str = "checkpoint", load: bool = True) -> Opened:
    """The model at `path`, of one of `kinds` (a verb names what it reads), with its config: the stored one, or
    the file `config` (its model must be the stored one's), with `overrides` on top. `load=False`: the config and
    step only (a checkpoint's files are then neither hashed nor read: whoever loads it checks them). `key` names
    the path in errors (`--checkpoint`, `checkpoint`)."""
    overrides = list(overrides or [])
    kind = _kind(path, tuple(kinds), key)
    reader = {CHECKPOINT: _open_checkpoint, EXPORT: _open_export, INT8: _open_int8}[kind]
    opened = reader(path, overrides, config=config, key=key, load=load)
    opened.config.freeze()  # checked once, here; a verb that serves it otherwise changes a copy
    return opened


def kind_of(path: str | Path) -> str:
    """What `path` holds, told without reading it: an int8 output (a directory holding model_int8.pt, or that
    file), an export (a file whose archive carries the export tag, read as bytes), else a checkpoint (whose
    reader says what is wrong, if it is none)."""
    if is_remote(str(path)):
        return CHECKPOINT
    here = Path(local(str(path)))
    if is_quantized(here):
        return INT8
    return EXPORT if here.is_file() and is_export(here) else CHECKPOINT


def _kind(path: str | Path, kinds: tuple[str, ...], key: str) -> str:
    """The reader for `path`: what it holds, among `kinds`; else the first of `kinds`, whose reader's error names
    what the path is not (an int8 output where a checkpoint is read, or no model at all, are named here)."""
    found = kind_of(path)
    if found == INT8 and INT8 not in kinds and CHECKPOINT in kinds:
        raise ConfigError(f"{key}: {path} holds an int8 model (disttrain quantize), not a sharded checkpoint; "
                          "expected --precision int8 with it (disttrain infer serves it) or the checkpoint it was "
                          "quantized from")
    if found == CHECKPOINT and len(kinds) > 1 and not is_remote(str(path)):
        try:
            find_checkpoint(str(path), "", key=key)
        except ConfigError:
            here = Path(local(str(path)))
            what = "not found" if not here.exists() else "a file" if here.is_file() else "a directory"
            raise ConfigError(f"{key}: {path}: {what}, no model; expected "
                              + " or ".join(EXPECTED[k] for k in kinds)) from None
    return found if found in kinds else kinds[0]


def run_config(stored: str, source: str, config: str | None, overrides: list[str]) -> config_mod.Config:
    """The stored config (`source` names it in errors) unless a config file is given (its model must be the
    stored one's), with the overrides on top."""
    if config:
        return config_mod.load_config(config, overrides)
    return config_mod.stored_config(stored, overrides, source=source)


# ----- a sharded checkpoint ------------------------------------------------------------------------------------

def _open_checkpoint(spec, overrides: list[str], *, config: str | None, key: str, load: bool) -> Opened:
    path = find_checkpoint(str(spec), "", key=key)  # on object storage: a local copy of its manifest and meta
    where = remote.source_of(path)
    try:
        read_manifest(path)
        meta = read_meta(path)  # checked field by field; `load_checkpoint` hashes it with the rest
        cfg = run_config(meta["config"], f"{where}/{META}", config, overrides)
        model, cfg = _load_plain(path, cfg) if load else (None, cfg)
    finally:
        remote.release(path)
    return Opened(CHECKPOINT, where, cfg, meta["step"], model, meta["config"])


def _one_process(cfg: config_mod.Config) -> tuple[nn.Module, ShardingPlan, config_mod.Config]:
    """The model (tables on meta), its plan on one process, every table whole, and the config of that plan (a
    copy of `cfg`)."""
    cfg = copy.deepcopy(cfg)
    cfg.sharding.strategy, cfg.sharding.tables, cfg.sharding.num_column_shards = "table_wise", {}, 0
    cfg.launch.backend = "gloo"
    return (*build_plan(cfg, 1), cfg.freeze())


def _parallelize(model: nn.Module, plan: ShardingPlan, cfg: config_mod.Config) -> Parallelized:
    return parallelize(model, plan=plan, comm=SingleProcess(), optimizer=cfg.train.optimizer, lr=cfg.train.lr,
                       seed=cfg.train.seed)


def single_process(cfg: config_mod.Config) -> Parallelized:
    """The model on one process, every table whole on rank 0: where a sharded checkpoint is assembled."""
    model, plan, one = _one_process(cfg)
    return _parallelize(model, plan, one)


def _load_plain(path: Path, cfg: config_mod.Config) -> tuple[nn.Module, config_mod.Config]:
    """The checkpoint at `path` as the plain model, from one build, and the one-process config it was loaded
    with: a copy is kept plain while the build is parallelized on one process and loaded (whatever world and
    plan wrote the checkpoint: resharding), then the loaded tensors are assigned to the copy."""
    model, plan, one = _one_process(cfg)
    plain = copy.deepcopy(model)
    par = _parallelize(model, plan, one)
    load_checkpoint(path, par=par, comm=SingleProcess(), cfg=one)
    return assign(plain, plain_state(par), source=str(remote.source_of(path)),
                  name=f"{cfg.model.name}/{cfg.model.flavor}"), one


def plain_state(par: Parallelized) -> dict[str, torch.Tensor]:
    """The plain model's state_dict of a loaded one-process model: dense parameters and buffers, every table
    whole (a dynamic table: its live rows after a zero default row, and their ids)."""
    state = {n: p.detach().clone() for n, p in par.model.named_parameters() if not n.startswith("embeddings.")}
    state |= {n: b.detach().clone() for n, b in dense_buffers(par.model)}  # rank 0's running statistics
    for table, _shard, weight in par.embeddings.local_shards():
        if not table.dynamic:
            state[f"embeddings.bags.{table.index}.weight"] = weight.detach().float().clone()
    for table, _shard, _key, store in par.embeddings.dynamic_shards():  # one part per table on one process
        ids, rows = store.rows.map.items()
        state[f"embeddings.dynamic_ids.t{table.index}"] = ids.clone()
        state[f"embeddings.bags.{table.index}.weight"] = torch.cat(
            [torch.zeros(1, table.dim), store.weight.index_select(0, rows).float()])
    return state


# ----- the plain model's tensors -------------------------------------------------------------------------------

def with_dynamic_tables(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain model whose state holds dynamic tables (`embeddings.dynamic_ids.t<i>`) reads them through
    `ServingEmbeddingBags` (frozen id maps); others are returned as they are."""
    prefix = "embeddings.dynamic_ids.t"
    sizes = {int(k[len(prefix):]): v.numel() for k, v in state.items() if k.startswith(prefix)}
    if sizes:
        model.embeddings = ServingEmbeddingBags(model.tables, sizes, device="meta")
    return model


def assign(model: nn.Module, state: dict[str, torch.Tensor], *, source: str, name: str) -> nn.Module:
    """`model` (`name`: model/flavor; tables on meta) holding `state`'s tensors, in eval mode; tensors that do
    not fit it are one line naming `source`."""
    try:
        model = with_dynamic_tables(model, state)
        model.load_state_dict(state, assign=True)
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{source}: its tensors do not fit model {name} ({_one_line(exc)})") from None
    return model.eval()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return (text[:limit] + " ...") if len(text) > limit else text or type(exc).__name__


# ----- one-file models: an export, an int8 output --------------------------------------------------------------

def read_saved(file: Path, *, fmt: str, name: str, missing: str, fields: dict[str, type]) -> dict:
    """A model file disttrain wrote (`torch.load(weights_only=True)`: tensors and plain data, never objects),
    tagged `fmt` and holding `fields` of their types; `name` says what it should be in errors, `missing` is the
    line for a file that does not exist."""
    try:
        saved = torch.load(file, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(missing) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same one line
        raise DataError(f"{file}: not a readable {name} ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(saved, dict) or saved.get("format") != fmt:
        raise DataError(f"{file}: not a {name} (expected format {fmt})")
    wrong = [field for field, kind in fields.items() if not isinstance(saved.get(field), kind)]
    if wrong:
        raise DataError(f"{file}: a {name} whose {', '.join(wrong)} is missing or of the wrong type; expected the "
                        "file as disttrain wrote it")
    return saved


def _open_export(path, overrides: list[str], *, config: str | None, key: str, load: bool) -> Opened:
    file = Path(path)
    saved = read_saved(file, fmt=EXPORT_FORMAT, name="disttrain export", missing=f"{file}: file not found",
                       fields={"config": str, "state_dict": dict, "step": int})
    cfg = run_config(saved["config"], str(file), config, overrides)
    model = None
    if load:
        model = assign(build_model(cfg, embedding_device="meta", data_shapes=False), saved["state_dict"],
                       source=str(file), name=f"{cfg.model.name}/{cfg.model.flavor}")
    return Opened(EXPORT, str(file), cfg, saved["step"], model, saved["config"])


def _open_int8(path, overrides: list[str], *, config: str | None, key: str, load: bool) -> Opened:
    file = model_file(path)
    saved = read_saved(file, fmt=INT8_FORMAT, name="disttrain int8 model",
                       missing=f"{file}: not found; expected a `disttrain quantize --out DIR` directory (it holds "
                               f"{MODEL_FILE})",
                       fields={"config": str, "step": int, "dense": dict, "linears": dict, "tables": dict})
    cfg = run_config(saved["config"], str(file), config, overrides)
    model = None
    if load:
        model = int8_model(build_model(cfg, embedding_device="meta", data_shapes=False), saved, file=file,
                           name=f"{cfg.model.name}/{cfg.model.flavor}")
    return Opened(INT8, str(file), cfg, saved["step"], model, saved["config"])
