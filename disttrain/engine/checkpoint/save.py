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
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import torch

from disttrain import config as config_mod
from disttrain.engine.checkpoint import dynamic, remote
from disttrain.engine.checkpoint.layout import (
    FORMAT,
    MANIFEST,
    META,
    TMP_PREFIX,
    committed_checkpoints,
    dense_buffers,
    dense_parameters,
    file_table,
    fsync_dir,
    rank_dir,
    shard_key,
    step_dir_name,
    write_json,
)
from disttrain.errors import DataError
from disttrain.fileio import sha256_file
from disttrain.optim import ELEMENT
from disttrain.storage import explain, filesystem, is_remote, join, local, remove_tree


def save_checkpoint(root: str | Path, *, step: int, par, comm, cfg, history: list[dict], run_id: str,
                    keep_last: int, fault_before_commit: bool = False, data: dict | None = None) -> Path:
    """Collective: every rank calls it after the same step. Returns the committed directory. If any rank cannot
    write (a full or read-only disk) or holds non-finite weights, every rank raises the same one-line error, the
    partial directory is removed and the newest committed checkpoint stays as it was."""
    if is_remote(root):
        return save_remote(str(root), step=step, par=par, comm=comm, cfg=cfg, history=history, run_id=run_id,
                           keep_last=keep_last, fault_before_commit=fault_before_commit, data=data)
    root = Path(local(root))
    token = comm.all_gather_object(uuid.uuid4().hex[:12] if comm.rank == 0 else None)[0]
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{token}"
    written, problem = None, _nonfinite(par, comm.rank)
    if problem is None:
        try:
            written = _write_rank(tmp, par, comm.rank)
        except Exception as exc:  # noqa: BLE001 - OSError, or torch's writer on a full disk
            problem = _failure(exc, root, step, comm.rank)
    # Also the point where every rank has written. Each node's launcher has its own run id; all are kept so a
    # restarted job finds its checkpoints whichever node its new rank 0 is on.
    gathered = comm.all_gather_object({"written": written, "problem": problem, "run_id": run_id})
    problem = next((g["problem"] for g in gathered if g["problem"]), None)  # the same on every rank
    committed = root / step_dir_name(step)
    if problem is None:
        if comm.rank == 0:
            if fault_before_commit:
                os._exit(19)  # tests: a writer killed after writing its files, before the commit
            try:
                _commit(tmp, committed, token, step=step, par=par, comm=comm, cfg=cfg, history=history, data=data,
                        gathered=gathered)
                _prune(root, keep_last, keep=committed)
            except OSError as exc:
                problem = _failure(exc, root, step, 0)
        problem = comm.all_gather_object(problem)[0]  # rank 0's commit, told to all (and their barrier)
    if problem is not None:
        if comm.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        comm.barrier()
        newest = committed_checkpoints(root)
        kept = f"{newest[-1].name} is intact" if newest else "no earlier checkpoint exists"
        raise DataError(f"{problem}; the partial checkpoint was removed, {kept}")
    return committed


def _nonfinite(par, rank: int) -> str | None:
    """A line naming what is not finite in this rank's weights (nothing is saved over a good checkpoint then)."""
    for table, _shard, weight in par.embeddings.local_shards():
        if not bool(torch.isfinite(weight).all()):
            return f"table {table.name} holds non-finite weights on rank {rank}: not saved"
    for name, param in dense_parameters(par.model):
        if not bool(torch.isfinite(param).all()):
            return f"dense parameter {name} is not finite on rank {rank}: not saved"
    return None


def _failure(exc: BaseException, root: Path, step: int, rank: int) -> str:
    """One line for a write that failed: the reason, and the free space when the disk is (nearly) full."""
    reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    try:
        free = shutil.disk_usage(root if root.exists() else root.parent).free
        space = f"; {free / 2**20:,.1f} MiB free there" if free < 256 * 2**20 or getattr(exc, "errno", 0) == 28 else ""
    except OSError:
        space = ""
    return f"checkpoint.dir: writing {root / step_dir_name(step)} failed on rank {rank} ({reason[:200]}{space})"


def _write_rank(tmp: Path, par, rank: int) -> dict:
    """This rank's shards (and, on rank 0, the replicated part) into its sub-directory of `tmp`."""
    import torch.distributed.checkpoint as dcp  # here, not at the top: its import takes ~0.7 s
    from torch.distributed.checkpoint.api import CheckpointException

    tmp.mkdir(parents=True, exist_ok=True)
    collection, sparse = par.embeddings, par.sparse_optimizer
    kinds = {name: kind == ELEMENT for name, kind in sparse.spec.state.items()}
    state_dict: dict[str, torch.Tensor] = {}
    records = []
    for table, shard, key, base in collection.shard_locations():
        if table.type.value == "data_parallel" and rank != 0:
            continue  # replicated: identical everywhere, written once
        rows = slice(base, base + shard.num_rows)
        name = shard_key(table.name, shard.rows, shard.cols)
        # fp32 on disk whatever model.embedding_dtype: any run can resume any checkpoint.
        state_dict[f"{name}/weight"] = collection.weight(key)[rows].detach().float().cpu()
        opt_state = sparse.state_for(key, collection.weight(key))
        for state_name in kinds:
            state_dict[f"{name}/opt/{state_name}"] = opt_state[state_name][rows].detach().cpu()
        records.append({"table": table.name, "rows": list(shard.rows), "cols": list(shard.cols), "rank": rank,
                        "key": name})
    records += dynamic.write_parts(collection, sparse, rank, state_dict, kinds)
    dense_opt: dict = {}
    if rank == 0:
        for pname, param in dense_parameters(par.model):
            state_dict[f"dense/{pname}"] = param.detach().cpu()
        for bname, buf in dense_buffers(par.model):
            state_dict[f"buffer/{bname}"] = buf.detach().cpu()
        for index, values in par.dense_optimizer.state_dict()["state"].items():
            for vname, value in values.items():
                if isinstance(value, torch.Tensor):
                    state_dict[f"dense_opt/{index}/{vname}"] = value.detach().cpu()
                    dense_opt.setdefault(str(index), {})[vname] = [list(value.shape), str(value.dtype).split(".")[-1]]
    state_dict["rng/torch"] = torch.get_rng_state()
    mine = tmp / rank_dir(rank)
    with warnings.catch_warnings():  # no_dist is the intent: disttrain's collectives coordinate the ranks
        warnings.simplefilter("ignore", UserWarning)
        try:
            dcp.save(state_dict, storage_writer=dcp.FileSystemWriter(str(mine)), no_dist=True)
        except CheckpointException as exc:  # a BaseException: made one the callers catch, with the same text
            raise RuntimeError(str(exc)) from exc
    return {"records": records, "files": file_table(tmp, mine), "dense_opt": dense_opt}


def _meta(*, step, par, comm, cfg, history, data, gathered) -> dict:
    collection, sparse = par.embeddings, par.sparse_optimizer
    written = [g["written"] for g in gathered]
    return {
        "format": FORMAT,
        "step": step,
        "run_ids": sorted({g["run_id"] for g in gathered if g["run_id"]}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "world_size": comm.world_size,
        "model": cfg.model.name,
        "flavor": cfg.model.flavor,
        "tables": [{"name": t.name, "rows": t.num_rows, "dim": t.dim} | ({"dynamic": True} if plan.dynamic else {})
                   for t, plan in zip(collection.tables, par.plan.tables)],
        "dense": {n: list(p.shape) for n, p in dense_parameters(par.model)},
        # The data-parallel part is rank 0's (the ranks' replicas were compared equal just before the save).
        "dense_from_rank": 0,
        "dense_buffers": {n: {"shape": list(b.shape), "dtype": str(b.dtype).split(".")[-1]}
                          for n, b in dense_buffers(par.model)},
        "optimizer": sparse.kind,
        "sparse_steps": sparse.steps,
        "dense_optimizer_state": written[0]["dense_opt"],
        "plan": par.plan.to_json(),
        "shards": [r for w in written for r in w["records"]],
        "history": history,
        "data": data or {"source": cfg.data.source},  # where the reader stands (batches are a function of step)
        "config": config_mod.to_yaml(cfg),
    }


def _write_meta_and_manifest(tmp: Path, meta: dict, gathered, step: int) -> None:
    write_json(tmp / META, meta)
    all_files = {k: v for g in gathered for k, v in g["written"]["files"].items()}
    all_files[META] = [(tmp / META).stat().st_size, sha256_file(tmp / META)]
    write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": all_files})


def _commit(tmp: Path, committed: Path, token: str, *, step, par, comm, cfg, history, data, gathered) -> None:
    """Rank 0: meta.json, then the manifest (the commit marker), then the atomic rename into place."""
    meta = _meta(step=step, par=par, comm=comm, cfg=cfg, history=history, data=data, gathered=gathered)
    _write_meta_and_manifest(tmp, meta, gathered, step)
    fsync_dir(tmp)
    root, old = committed.parent, None
    if committed.exists():  # the same step saved again (a rerun): replace it only once the new one is whole
        old = root / f"{TMP_PREFIX}old-{committed.name}-{token}"
        committed.rename(old)
    tmp.rename(committed)
    fsync_dir(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, keep_last: int, *, keep: Path) -> None:
    """Drop committed checkpoints beyond the newest `keep_last` and partial ones left by crashed writers."""
    for partial in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(partial, ignore_errors=True)
    if keep_last > 0:
        for old in committed_checkpoints(root)[:-keep_last]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)


# ----- object storage ----------------------------------------------------------------------------------------------
def save_remote(url: str, *, step, par, comm, cfg, history, run_id, keep_last, fault_before_commit=False,
                data=None) -> str:
    """`save_checkpoint` to object storage: each rank writes and hashes its files locally, uploads them, then rank
    0 uploads meta.json and the manifest last (the commit); see `remote`."""
    fs, root = filesystem(url, key="checkpoint.dir")
    name = step_dir_name(step)
    prefix = join(root, name)
    problem = None
    if comm.rank == 0:  # the same step saved again: it stops being a checkpoint before any file changes
        problem = _try(lambda: fs.exists(join(prefix, MANIFEST)) and fs.rm_file(join(prefix, MANIFEST)), url, step, 0)
    problem = comm.all_gather_object(problem)[0]
    staging = Path(tempfile.mkdtemp(prefix="disttrain-save-"))
    written = None
    try:
        problem = problem or _nonfinite(par, comm.rank)
        if problem is None:
            try:
                written = _write_rank(staging, par, comm.rank)
            except Exception as exc:  # noqa: BLE001 - the local staging disk
                problem = _failure(exc, staging, step, comm.rank)
        if problem is None:
            problem = _try(lambda: _upload(fs, staging, prefix, list(written["files"])), url, step, comm.rank)
        gathered = comm.all_gather_object({"written": written, "problem": problem, "run_id": run_id})
        problem = next((g["problem"] for g in gathered if g["problem"]), None)
        if problem is None and comm.rank == 0:
            if fault_before_commit:
                os._exit(19)  # tests: killed after every rank uploaded, before the commit

            def commit() -> None:
                meta = _meta(step=step, par=par, comm=comm, cfg=cfg, history=history, data=data, gathered=gathered)
                _write_meta_and_manifest(staging, meta, gathered, step)
                _upload(fs, staging, prefix, [META, MANIFEST])  # in this order: the manifest is the commit
                _prune_remote(fs, root, keep_last, keep=name)

            problem = _try(commit, url, step, 0)
        problem = problem or comm.all_gather_object(problem)[0]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if problem is not None:
        if comm.rank == 0:
            _try(lambda: remove_tree(fs, prefix), url, step, 0)
        comm.barrier()
        newest = remote.committed(url)
        kept = f"{newest[-1].rsplit('/', 1)[-1]} is intact" if newest else "no earlier checkpoint exists"
        raise DataError(f"{problem}; the partial checkpoint was removed, {kept}")
    return join(url, name)


def _upload(fs, staging: Path, prefix: str, files: list[str]) -> None:
    fs.put([str(staging / f) for f in files], [join(prefix, f) for f in files])


def _try(fn, url: str, step: int, rank: int) -> str | None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the store's errors: one line naming the checkpoint
        return f"checkpoint.dir: writing {join(url, step_dir_name(step))} failed on rank {rank} " \
               f"({str(explain(exc, url, 'checkpoint.dir')).split(': ', 2)[-1]})"
    return None


def _prune_remote(fs, root: str, keep_last: int, *, keep: str) -> None:
    """Drop complete checkpoints beyond the newest `keep_last` and prefixes without a manifest (partial saves)."""
    steps = [p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    complete = {p.rsplit("/", 2)[-2] for p in fs.glob(join(root, "step_*", MANIFEST))}
    doomed = [s for s in steps if s.startswith("step_") and s not in complete and s != keep]
    if keep_last > 0:
        doomed += [s for s in sorted(complete)[:-keep_last] if s != keep]
    for s in doomed:
        remove_tree(fs, join(root, s))  # every object and every emptied rank_* entry: nothing of it is listed
