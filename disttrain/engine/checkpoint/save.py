"""Saving a sharded checkpoint: collective, every rank writes its own shards, rank 0 commits.

Every rank writes its own shards (weights and sparse optimizer state) with `torch.distributed.checkpoint` into
its own sub-directory (`no_dist`: the coordination goes through disttrain's collectives, so checkpoints work the
same under torch.distributed and Horovod). Rank 0 writes the replicated part (dense parameters and optimizer,
replicated tables) once. The checkpoint is assembled in a hidden `.tmp-...` directory and renamed into place
after every rank has written and `manifest.json` exists: a crash mid-write leaves only a hidden partial directory,
which readers ignore and the next save removes.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

import torch

from disttrain import config as config_mod
from disttrain.engine.checkpoint.layout import (
    FORMAT,
    MANIFEST,
    META,
    TMP_PREFIX,
    committed_checkpoints,
    dense_parameters,
    file_table,
    fsync_dir,
    rank_dir,
    shard_key,
    step_dir_name,
    write_json,
)
from disttrain.fileio import sha256_file
from disttrain.optim import ELEMENT


def save_checkpoint(root: str | Path, *, step: int, par, comm, cfg, history: list[dict], run_id: str,
                    keep_last: int, fault_before_commit: bool = False, data: dict | None = None) -> Path:
    """Collective: every rank calls it after the same step. Returns the committed directory."""
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    token = comm.all_gather_object(uuid.uuid4().hex[:12] if comm.rank == 0 else None)[0]
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{token}"
    tmp.mkdir(parents=True, exist_ok=True)

    collection, sparse = par.embeddings, par.sparse_optimizer
    kinds = {name: kind == ELEMENT for name, kind in sparse.spec.state.items()}
    state_dict: dict[str, torch.Tensor] = {}
    records = []
    for table, shard, key, base in collection.shard_locations():
        if table.type.value == "data_parallel" and comm.rank != 0:
            continue  # replicated: identical everywhere, written once
        rows = slice(base, base + shard.num_rows)
        name = shard_key(table.name, shard.rows, shard.cols)
        # fp32 on disk whatever model.embedding_dtype: any run can resume any checkpoint.
        state_dict[f"{name}/weight"] = collection.weight(key)[rows].detach().float().cpu()
        opt_state = sparse.state_for(key, collection.weight(key))
        for state_name in kinds:
            state_dict[f"{name}/opt/{state_name}"] = opt_state[state_name][rows].detach().cpu()
        records.append({"table": table.name, "rows": list(shard.rows), "cols": list(shard.cols),
                        "rank": comm.rank, "key": name})
    dense_opt = {}
    if comm.rank == 0:
        for pname, param in dense_parameters(par.model):
            state_dict[f"dense/{pname}"] = param.detach().cpu()
        for index, values in par.dense_optimizer.state_dict()["state"].items():
            for vname, value in values.items():
                if isinstance(value, torch.Tensor):
                    state_dict[f"dense_opt/{index}/{vname}"] = value.detach().cpu()
                    dense_opt.setdefault(str(index), {})[vname] = [list(value.shape), str(value.dtype).split(".")[-1]]
    state_dict["rng/torch"] = torch.get_rng_state()
    mine = tmp / rank_dir(comm.rank)
    with warnings.catch_warnings():  # no_dist is the intent: disttrain's collectives coordinate the ranks
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state_dict, storage_writer=dcp.FileSystemWriter(str(mine)), no_dist=True)
    files = file_table(tmp, mine)

    # Also the point where every rank has written. Each node's launcher has its own run id; all are kept so a
    # restarted job finds its checkpoints whichever node its new rank 0 is on.
    gathered = comm.all_gather_object({"records": records, "files": files, "run_id": run_id})
    committed = root / step_dir_name(step)
    if comm.rank == 0:
        if fault_before_commit:
            os._exit(19)  # tests: a writer killed after writing its files, before the commit
        meta = {
            "format": FORMAT,
            "step": step,
            "run_ids": sorted({g["run_id"] for g in gathered if g["run_id"]}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "world_size": comm.world_size,
            "model": cfg.model.name,
            "flavor": cfg.model.flavor,
            "tables": [{"name": t.name, "rows": t.num_rows, "dim": t.dim} for t in collection.tables],
            "dense": {n: list(p.shape) for n, p in dense_parameters(par.model)},
            "optimizer": sparse.kind,
            "sparse_steps": sparse.steps,
            "dense_optimizer_state": dense_opt,
            "plan": par.plan.to_json(),
            "shards": [r for g in gathered for r in g["records"]],
            "history": history,
            "data": data or {"source": cfg.data.source},  # where the reader stands (batches are a function of step)
            "config": config_mod.to_yaml(cfg),
        }
        write_json(tmp / META, meta)
        all_files = {k: v for g in gathered for k, v in g["files"].items()}
        all_files[META] = [(tmp / META).stat().st_size, sha256_file(tmp / META)]
        write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": all_files})
        fsync_dir(tmp)
        old = None
        if committed.exists():  # the same step saved again (a rerun): replace it only once the new one is whole
            old = root / f"{TMP_PREFIX}old-{committed.name}-{token}"
            committed.rename(old)
        tmp.rename(committed)
        fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _prune(root, keep_last, keep=committed)
    comm.barrier()
    return committed


def _prune(root: Path, keep_last: int, *, keep: Path) -> None:
    """Drop committed checkpoints beyond the newest `keep_last` and partial ones left by crashed writers."""
    for partial in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(partial, ignore_errors=True)
    if keep_last > 0:
        for old in committed_checkpoints(root)[:-keep_last]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
