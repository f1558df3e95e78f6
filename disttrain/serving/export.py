"""Sharded checkpoints as one plain model, in one process.

    single_process(cfg)                the parallelized model on a world of one, every table whole
    unsharded_state(checkpoint)        (config, the plain model's state_dict, step), whatever world wrote it
    plain_model(checkpoint)            the plain model in eval mode (what serving runs)
    export_model(checkpoint, out)      one file, unsharded: the plain model's state_dict + its config
    load_exported(path)                -> (plain model in eval mode, config); never unpickles objects

The export file is a dict of tensors, strings and ints (`torch.load(weights_only=True)` reads it). A stored config
that names a user's model or data source by import path is built only when `overrides` name the same code
(`disttrain.config.stored_config`): reading a file never makes disttrain import code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from disttrain import config as config_mod
from disttrain.collectives import SingleProcess
from disttrain.engine.build import build_model, build_plan
from disttrain.engine.checkpoint import META, find_checkpoint, load_checkpoint, verify
from disttrain.engine.checkpoint.layout import EXPORT_FORMAT, dense_buffers
from disttrain.errors import DataError
from disttrain.layers.dynamic_lookup import ServingEmbeddingBags
from disttrain.parallelize import Parallelized, parallelize


def single_process(cfg: config_mod.Config) -> Parallelized:
    """The model on one process, every table whole on rank 0: where a sharded checkpoint is assembled."""
    cfg.sharding.strategy, cfg.sharding.tables, cfg.sharding.num_column_shards = "table_wise", {}, 0
    cfg.launch.backend = "gloo"
    model, plan = build_plan(cfg, 1)
    return parallelize(model, plan=plan, comm=SingleProcess(), optimizer=cfg.train.optimizer, lr=cfg.train.lr,
                       seed=cfg.train.seed)


def unsharded_state(checkpoint: str | Path, overrides: list[str] | None = None,
                    ) -> tuple[config_mod.Config, dict[str, torch.Tensor], int]:
    """(config, the plain model's state_dict, step) of a sharded checkpoint, whatever world wrote it (`overrides`
    only vouch for code its config names)."""
    path = find_checkpoint(str(checkpoint), "", key="checkpoint")
    meta = verify(path)
    cfg = config_mod.stored_config(meta["config"], overrides, source=f"{path / META}", apply=False)
    par = single_process(cfg)
    load_checkpoint(path, par=par, comm=SingleProcess(), cfg=cfg)
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
    return cfg, state, meta["step"]


def with_dynamic_tables(model, state: dict[str, torch.Tensor]):
    """A plain model whose state holds dynamic tables (`embeddings.dynamic_ids.t<i>`) reads them through
    `ServingEmbeddingBags` (frozen id maps); others are returned as they are."""
    prefix = "embeddings.dynamic_ids.t"
    sizes = {int(k[len(prefix):]): v.numel() for k, v in state.items() if k.startswith(prefix)}
    if sizes:
        model.embeddings = ServingEmbeddingBags(model.tables, sizes, device="meta")
    return model


def plain_model(checkpoint: str | Path, overrides: list[str] | None = None):
    """(the plain model in eval mode, its config, step) of a sharded checkpoint, whatever world wrote it;
    `overrides` adjust what does not change the weights (data.path, data.eval_batches, ...)."""
    cfg, state, step = unsharded_state(checkpoint, overrides)
    if overrides:
        cfg = config_mod.config_from_yaml(config_mod.to_yaml(cfg), overrides, source="checkpoint config")
    model = with_dynamic_tables(build_model(cfg, embedding_device="meta", data_shapes=False), state)
    model.load_state_dict(state, assign=True)
    return model.eval(), cfg, step


def export_model(checkpoint: str | Path, out: str | Path, overrides: list[str] | None = None) -> Path:
    """`out`: the plain model's state_dict and config (with `overrides` on top: those that keep the weights'
    shapes, or the model is rebuilt and refused)."""
    model, cfg, step = plain_model(checkpoint, overrides)
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"format": EXPORT_FORMAT, "model": cfg.model.name, "flavor": cfg.model.flavor, "step": step,
                "config": config_mod.to_yaml(cfg), "state_dict": state}, tmp)
    tmp.replace(out)
    return out


def load_exported(path: str | Path, overrides: list[str] | None = None):
    """The plain (unsharded) model of an export, in eval mode, and its config (`overrides` on top)."""
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable disttrain export ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise DataError(f"{path}: not a disttrain export (expected format {EXPORT_FORMAT})")
    cfg = config_mod.stored_config(data["config"], overrides, source=str(path))
    state = data["state_dict"]
    model = with_dynamic_tables(build_model(cfg, embedding_device="meta", data_shapes=False), state)
    model.load_state_dict(state, assign=True)
    return model.eval(), cfg
