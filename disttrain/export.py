"""Single-file models in and out of sharded checkpoints.

    export_model(checkpoint, out)      one file, unsharded: the plain model's state_dict + its config
    load_exported(path)                 -> (plain model in eval mode, config); never unpickles objects
    import_reference(ref, out, ...)     a checkpoint of Facebook's dlrm_s_pytorch.py --save-model -> a
                                        disttrain checkpoint, loadable sharded on any world size

The export file is a dict of tensors, strings and ints (`torch.load(weights_only=True)` reads it).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from disttrain import config as config_mod
from disttrain.checkpoint import META, find_checkpoint, load_checkpoint, save_checkpoint, verify
from disttrain.collectives import SingleProcess
from disttrain.errors import ConfigError, DataError

EXPORT_FORMAT = "disttrain-export-v1"


def _single_process(cfg: config_mod.Config):
    """The model on one process, every table whole on rank 0: where a sharded checkpoint is assembled."""
    from disttrain.parallelize import parallelize
    from disttrain.trainer import build_plan

    cfg.sharding.strategy, cfg.sharding.tables, cfg.sharding.num_column_shards = "table_wise", {}, 0
    cfg.launch.backend = "gloo"
    model, plan = build_plan(cfg, 1)
    return parallelize(model, plan=plan, comm=SingleProcess(), optimizer=cfg.train.optimizer, lr=cfg.train.lr,
                       seed=cfg.train.seed)


def unsharded_state(checkpoint: str | Path) -> tuple[config_mod.Config, dict[str, torch.Tensor], int]:
    """(config, the plain model's state_dict, step) of a sharded checkpoint, whatever world wrote it."""
    path = find_checkpoint(str(checkpoint), "", key="checkpoint")
    meta = verify(path)
    cfg = config_mod.config_from_yaml(meta["config"], source=f"{path / META}")
    par = _single_process(cfg)
    load_checkpoint(path, par=par, comm=SingleProcess(), cfg=cfg)
    state = {n: p.detach().clone() for n, p in par.model.named_parameters() if not n.startswith("embeddings.")}
    for table, _shard, weight in par.embeddings.local_shards():
        state[f"embeddings.bags.{table.index}.weight"] = weight.detach().float().clone()
    return cfg, state, meta["step"]


def plain_model(checkpoint: str | Path, overrides: list[str] | None = None):
    """(the plain model in eval mode, its config, step) of a sharded checkpoint, whatever world wrote it;
    `overrides` adjust what does not change the weights (data.path, data.eval_batches, ...)."""
    from disttrain.models import MODELS

    cfg, state, step = unsharded_state(checkpoint)
    if overrides:
        cfg = config_mod.config_from_yaml(config_mod.to_yaml(cfg), overrides, source="checkpoint config")
    model = MODELS[cfg.model.name](cfg, embedding_device="meta")
    model.load_state_dict(state, assign=True)
    return model.eval(), cfg, step


def export_model(checkpoint: str | Path, out: str | Path) -> Path:
    cfg, state, step = unsharded_state(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"format": EXPORT_FORMAT, "model": cfg.model.name, "flavor": cfg.model.flavor, "step": step,
                "config": config_mod.to_yaml(cfg), "state_dict": state}, tmp)
    tmp.replace(out)
    return out


def load_exported(path: str | Path):
    """The plain (unsharded) model of an export, in eval mode, and its config."""
    from disttrain.models import MODELS

    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable disttrain export ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise DataError(f"{path}: not a disttrain export (expected format {EXPORT_FORMAT})")
    cfg = config_mod.config_from_yaml(data["config"], source=str(path))
    model = MODELS[cfg.model.name](cfg)
    model.load_state_dict(data["state_dict"])
    return model.eval(), cfg


# ----- Facebook's reference DLRM -------------------------------------------------------------------------------
_REF_KEY = re.compile(r"^(?:module\.)?(emb_l|bot_l|top_l)\.(\d+)\.(weight|bias)$")


def read_reference(path: str | Path) -> dict:
    """`dlrm_s_pytorch.py --save-model` output, read without unpickling arbitrary objects: tensors, plain
    containers and the numpy scalars its metadata holds are all the loader allows."""
    import numpy as np

    allowed = [np.dtype, type(np.dtype("float64")), type(np.dtype("float32")), type(np.dtype("int64"))]
    try:
        allowed.append(np._core.multiarray.scalar)  # numpy >= 2
    except AttributeError:
        allowed.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a loadable reference DLRM checkpoint ({first})") from None
    state = data.get("state_dict") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a dict with 'state_dict' (dlrm_s_pytorch.py --save-model layout)")
    return data


def import_reference(ref: str | Path, out: str | Path, overrides: list[str] | None = None) -> Path:
    """Write a disttrain checkpoint (step 0) holding the reference model's weights."""
    data = read_reference(ref)
    tables, bottom, top = {}, {}, {}
    for key, tensor in data["state_dict"].items():
        match = _REF_KEY.match(key)
        if not match:
            continue
        group, index, kind = match.group(1), int(match.group(2)), match.group(3)
        target = {"emb_l": tables, "bot_l": bottom, "top_l": top}[group]
        target[(index, kind)] = tensor
    if not tables:
        raise DataError(f"{ref}: no emb_l.N.weight tensors in state_dict; expected the reference DLRM layout")
    emb = [tables[(i, "weight")] for i in range(len(tables))]
    dims = {w.shape[1] for w in emb}
    if len(dims) != 1:
        raise DataError(f"{ref}: tables of several widths {sorted(dims)}; DLRM expects one embedding dim")
    cfg = config_mod.load_config(None, [*(overrides or []), f"model.table_sizes={[int(w.shape[0]) for w in emb]}",
                                        f"model.embedding_dim={dims.pop()}"])
    if cfg.model.name != "dlrm":
        raise ConfigError(f"model.name: got {cfg.model.name!r}; reference checkpoints hold DLRM, expected dlrm")
    par = _single_process(cfg)
    mapped = {**{f"bottom.{i}.{k}": t for (i, k), t in bottom.items()}, **{f"top.{i}.{k}": t for (i, k), t in top.items()}}
    dense = dict(par.model.named_parameters())
    problems = []
    for name, param in dense.items():
        if name.startswith("embeddings."):
            continue
        got = mapped.pop(name, None)
        if got is None:
            problems.append(f"{name} {list(param.shape)} is missing")
        elif got.shape != param.shape:
            problems.append(f"{name} is {list(got.shape)} in the file, {list(param.shape)} in model.flavor="
                            f"{cfg.model.flavor}")
    problems += [f"{name} {list(t.shape)} has no place in model.flavor={cfg.model.flavor}" for name, t in mapped.items()]
    if problems:
        raise DataError(f"{ref}: does not fit the DLRM {cfg.model.flavor} MLPs: " + "; ".join(problems))
    with torch.no_grad():
        for name, param in dense.items():
            if not name.startswith("embeddings."):
                param.copy_({**{f"bottom.{i}.{k}": t for (i, k), t in bottom.items()},
                             **{f"top.{i}.{k}": t for (i, k), t in top.items()}}[name])
        for table, _shard, weight in par.embeddings.local_shards():
            weight.copy_(emb[table.index])
    out = Path(out)
    history = [{"imported_from": str(ref), **{k: _plain(v) for k, v in data.items() if k not in ("state_dict", "opt_state_dict")}}]
    return save_checkpoint(out, step=0, par=par, comm=SingleProcess(), cfg=cfg, history=history, run_id="", keep_last=0)


def _plain(value):
    """Reference metadata (numpy scalars, tensors) as JSON-friendly values."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
