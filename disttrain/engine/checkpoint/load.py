"""Loading is resharding: each rank of the new job (any world size, any plan) reads, for each of its shards, the
saved pieces that overlap it (row and column ranges) and copies the overlap. Files are checked against the
manifest (size, sha256) before anything is read. Row-wise Adagrad state of a column shard is kept per column
shard while training; merging column shards weights each piece's accumulator by its column count (exact when the
new shard is a union of old ones).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from disttrain.engine.checkpoint import dynamic, remote
from disttrain.engine.checkpoint.layout import dense_buffers, dense_parameters, rank_dir
from disttrain.engine.checkpoint.verify import check_fits, read_manifest, read_meta, verify_shared
from disttrain.errors import DataError
from disttrain.optim import ELEMENT
from disttrain.ranges import overlap


@dataclass
class Loaded:
    step: int
    history: list[dict]
    path: Path
    optimizer_restored: bool
    data: dict | None = None


class _Reader:
    """Reads saved tensors by key from the rank directories, once each, as data (`safe_read`): only files the
    manifest lists, metadata without code, tensors only (a byte entry is refused, never unpickled)."""

    def __init__(self, path: Path):
        self.path = path
        self.cache: dict[str, torch.Tensor] = {}
        self.files = list(read_manifest(path)["files"])
        self.checked: set[str] = set()

    def get(self, rank: int, key: str, shape: list[int], dtype=torch.float32) -> torch.Tensor:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        from disttrain.engine.checkpoint import safe_dcp

        if key not in self.cache:
            directory = rank_dir(rank)
            allowed = {rel.split("/", 1)[1] for rel in self.files if rel.startswith(directory + "/")}
            reader = safe_dcp.SafeFileSystemReader(self.path / directory, allowed)
            if directory not in self.checked:  # the metadata as data, before DCP sees it
                reader.read_metadata()
                self.checked.add(directory)
            out = {key: torch.empty(shape, dtype=dtype)}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    dcp.load(out, storage_reader=reader, planner=safe_dcp.TensorsOnlyLoadPlanner(reader.directory),
                             no_dist=True)
            except (Exception, CheckpointException) as exc:  # noqa: BLE001 - DCP's errors (a missing key, other sizes)
                refused = safe_dcp.refusal_in(exc)
                if refused is not None:  # our own refusal from inside DCP (a byte entry): said as it was
                    raise DataError(str(refused)) from None
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise DataError(f"checkpoint {self.path}: {directory}: {key} cannot be read as {list(shape)} "
                                f"{str(dtype).removeprefix('torch.')} ({first[:200]})") from None
            self.cache[key] = out[key]
        return self.cache[key]


def renamed_tables(meta: dict, tables) -> dict:
    """A checkpoint whose tables are named t0, t1, ... (written before tables took their columns' names, or by
    `disttrain import`) read by a model whose tables have names, or the reverse: the tables match by position."""
    saved = [t["name"] for t in meta["tables"]]
    here = [t.name for t in tables]
    numbered = [f"t{i}" for i in range(len(here))]
    if saved == here or len(saved) != len(here) or numbered not in (saved, here):
        return meta
    new = dict(zip(saved, here))
    return {**meta, "tables": [{**t, "name": new[t["name"]]} for t in meta["tables"]],
            "shards": [{**s, "table": new.get(s["table"], s["table"])} for s in meta["shards"]]}


def load_checkpoint(path, *, par, comm, cfg, verified: str = "") -> Loaded:
    """Fill this rank's shards, the dense part and the optimizers from `path` (a local checkpoint, or a local copy
    of one on object storage, removed afterwards), whatever plan wrote it. `verified`: the resolved directory the
    launch pre-flight hashed already (`Job.verified_checkpoint`): its sizes are checked, not its hashes."""
    try:
        return _load(Path(path), par=par, comm=comm, cfg=cfg, verified=verified)
    finally:
        remote.release(path)


def _load(path: Path, *, par, comm, cfg, verified: str) -> Loaded:
    collection, sparse = par.embeddings, par.sparse_optimizer
    locations = collection.shard_locations()
    meta = renamed_tables(read_meta(path), collection.tables)  # checked field by field before anything is sized
    by_table: dict[str, list[dict]] = {}
    for record in meta["shards"]:
        by_table.setdefault(record["table"], []).append(record)
    # Verify what this rank will read: rank 0's files (dense part) and those of every overlapping writer.
    needed = {rank_dir(0)} | ({rank_dir(comm.rank)} if meta["world_size"] == comm.world_size else set())
    for table, shard, _, _ in locations:
        for rec in by_table.get(table.name, []):
            if overlap(shard.rows, tuple(rec["rows"])) and overlap(shard.cols, tuple(rec["cols"])):
                needed.add(rank_dir(rec["rank"]))
    needed |= {rank_dir(r) for r in dynamic.needed_ranks(meta["shards"], collection)}
    meta = renamed_tables(verify_shared(path, comm, needed, verified=verified), collection.tables)
    dynamic.check_kinds(meta, path, par.plan)
    check_fits(meta, path, model=cfg.model.name, tables=collection.tables,
               dense_shapes={n: list(p.shape) for n, p in dense_parameters(par.model)})
    same_optimizer = meta["optimizer"] == sparse.kind
    reader = _Reader(path)
    kinds = {name: kind == ELEMENT for name, kind in sparse.spec.state.items()} if same_optimizer else {}
    with torch.no_grad():
        for table, shard, key, base in locations:
            weight = collection.weight(key)
            opt_state = sparse.state_for(key, weight)
            if kinds.get("sum") is False:
                opt_state["sum"][base : base + shard.num_rows] = 0
            for rec in by_table[table.name]:
                rows, cols = overlap(shard.rows, tuple(rec["rows"])), overlap(shard.cols, tuple(rec["cols"]))
                if rows is None or cols is None:
                    continue
                saved_shape = [rec["rows"][1] - rec["rows"][0], rec["cols"][1] - rec["cols"][0]]
                src_rows = slice(rows[0] - rec["rows"][0], rows[1] - rec["rows"][0])
                src_cols = slice(cols[0] - rec["cols"][0], cols[1] - rec["cols"][0])
                dst_rows = slice(base + rows[0] - shard.rows[0], base + rows[1] - shard.rows[0])
                dst_cols = slice(cols[0] - shard.cols[0], cols[1] - shard.cols[0])
                saved = reader.get(rec["rank"], f"{rec['key']}/weight", saved_shape)
                weight[dst_rows, dst_cols] = saved[src_rows, src_cols].to(weight.device)
                for state_name, has_cols in kinds.items():
                    if has_cols:
                        piece = reader.get(rec["rank"], f"{rec['key']}/opt/{state_name}", saved_shape)
                        opt_state[state_name][dst_rows, dst_cols] = piece[src_rows, src_cols].to(weight.device)
                    else:  # row-wise accumulator: weight each saved column piece by its share of the columns
                        piece = reader.get(rec["rank"], f"{rec['key']}/opt/{state_name}", saved_shape[:1])
                        share = (cols[1] - cols[0]) / shard.num_cols
                        opt_state[state_name][dst_rows] += piece[src_rows].to(weight.device) * share
        dynamic.load_parts(reader, by_table, collection, sparse, kinds, meta["world_size"] == comm.world_size,
                           comm.rank)
        for name, param in dense_parameters(par.model):
            param.copy_(reader.get(0, f"dense/{name}", meta["dense"][name]))
        _load_buffers(par.model, meta, reader, path)
    dense_restored = same_optimizer and _load_dense_optimizer(par.dense_optimizer, meta, reader)
    if same_optimizer:
        sparse.steps = meta["sparse_steps"]
    if meta["world_size"] == comm.world_size:
        torch.set_rng_state(reader_rng(path, comm.rank))
    return Loaded(step=meta["step"], history=meta["history"], path=remote.source_of(path),
                  optimizer_restored=same_optimizer and dense_restored, data=meta.get("data"))


def reader_rng(path: Path, rank: int) -> torch.Tensor:
    return _Reader(path).get(rank, "rng/torch", list(torch.get_rng_state().shape), dtype=torch.uint8)


def _load_buffers(model, meta: dict, reader: _Reader, path: Path) -> None:
    """Rank 0's persistent dense buffers (running statistics), where the checkpoint has them (it has all of a
    model's since they were saved; an older checkpoint leaves them as built)."""
    saved = meta.get("dense_buffers", {})
    for name, buf in dense_buffers(model):
        if name not in saved:
            continue
        shape, dtype = saved[name]["shape"], getattr(torch, saved[name]["dtype"])  # one of BUFFER_DTYPES
        if list(buf.shape) != shape:
            raise DataError(f"checkpoint {path} does not fit this model: buffer {name} is {shape} in the checkpoint, "
                            f"{list(buf.shape)} here")
        buf.copy_(reader.get(0, f"buffer/{name}", shape, dtype=dtype).to(buf.dtype))


def _load_dense_optimizer(optimizer: torch.optim.Optimizer, meta: dict, reader: _Reader) -> bool:
    saved = meta["dense_optimizer_state"]
    current = optimizer.state_dict()
    state = {}
    for index, values in saved.items():
        state[int(index)] = {}
        for vname, (shape, dtype) in values.items():
            tensor = reader.get(0, f"dense_opt/{index}/{vname}", shape, dtype=getattr(torch, dtype))
            state[int(index)][vname] = tensor.clone()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    return True
