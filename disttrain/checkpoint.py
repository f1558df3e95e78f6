"""Sharded checkpoints: save, verify, resume and reshard.

Layout of one checkpoint (`<checkpoint.dir>/step_00000120/`):

    rank_00000/ ...        torch.distributed.checkpoint files written by rank 0 (its shards, the dense part)
    rank_00001/ ...        rank 1's shards (each rank writes only what it holds)
    meta.json              step, model, tables, plan, where every shard lives, optimizer, history, config
    manifest.json          size and sha256 of every file above: the commit marker, written last

Every rank writes its own shards (weights and sparse optimizer state) with `torch.distributed.checkpoint` into
its own sub-directory (`no_dist`: the coordination goes through disttrain's collectives, so checkpoints work the
same under torch.distributed and Horovod). Rank 0 writes the replicated part (dense parameters and optimizer,
replicated tables) once. The checkpoint is assembled in a hidden `.tmp-...` directory and renamed into place
after every rank has written and `manifest.json` exists: a crash mid-write leaves only a hidden partial directory,
which readers ignore and the next save removes.

Loading is resharding: each rank of the new job (any world size, any plan) reads, for each of its shards, the
saved pieces that overlap it (row and column ranges) and copies the overlap. Files are checked against the
manifest (size, sha256) before anything is read. Row-wise Adagrad state of a column shard is kept per column
shard while training; merging column shards weights each piece's accumulator by its column count (exact when the
new shard is a union of old ones).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from disttrain.errors import ConfigError, DataError
from disttrain.fileio import sha256_file

FORMAT = "disttrain-checkpoint-v1"
MANIFEST = "manifest.json"
META = "meta.json"
STEP_PREFIX = "step_"
TMP_PREFIX = ".tmp-"

# Sparse optimizer state per shard: name -> whether it has columns (False: one value per row).
SPARSE_STATE = {
    "sgd": {},
    "adagrad": {"sum": True},
    "adagraddecay": {"sum": True},
    "rowwise_adagrad": {"sum": False},
    "adam": {"exp_avg": True, "exp_avg_sq": True},
}


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def _rank_dir(rank: int) -> str:
    return f"rank_{rank:05d}"


def _shard_key(table: str, rows: tuple[int, int], cols: tuple[int, int]) -> str:
    return f"tables/{table}/r{rows[0]}-{rows[1]}/c{cols[0]}-{cols[1]}"


def _file_table(root: Path, sub: Path) -> dict[str, list]:
    return {
        str(p.relative_to(root)): [p.stat().st_size, sha256_file(p)]
        for p in sorted(sub.rglob("*")) if p.is_file()
    }


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----- save ----------------------------------------------------------------------------------------------------
def save_checkpoint(root: str | Path, *, step: int, par, comm, cfg, history: list[dict], run_id: str,
                    keep_last: int, fault_before_commit: bool = False, data: dict | None = None) -> Path:
    """Collective: every rank calls it after the same step. Returns the committed directory."""
    import torch.distributed.checkpoint as dcp

    from disttrain import config as config_mod

    root = Path(root)
    token = comm.all_gather_object(uuid.uuid4().hex[:12] if comm.rank == 0 else None)[0]
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{token}"
    tmp.mkdir(parents=True, exist_ok=True)

    collection, sparse = par.embeddings, par.sparse_optimizer
    kinds = SPARSE_STATE[sparse.kind]
    state_dict: dict[str, torch.Tensor] = {}
    records = []
    for table, shard, key, base in collection.shard_locations():
        if table.type.value == "data_parallel" and comm.rank != 0:
            continue  # replicated: identical everywhere, written once
        rows = slice(base, base + shard.num_rows)
        name = _shard_key(table.name, shard.rows, shard.cols)
        # fp32 on disk whatever model.embedding_dtype: any run can resume any checkpoint.
        state_dict[f"{name}/weight"] = collection.weight(key)[rows].detach().float().cpu()
        opt_state = sparse._state(key, collection.weight(key))
        for state_name in kinds:
            state_dict[f"{name}/opt/{state_name}"] = opt_state[state_name][rows].detach().cpu()
        records.append({"table": table.name, "rows": list(shard.rows), "cols": list(shard.cols),
                        "rank": comm.rank, "key": name})
    dense_opt = {}
    if comm.rank == 0:
        for pname, param in _dense_parameters(par.model):
            state_dict[f"dense/{pname}"] = param.detach().cpu()
        for index, values in par.dense_optimizer.state_dict()["state"].items():
            for vname, value in values.items():
                if isinstance(value, torch.Tensor):
                    state_dict[f"dense_opt/{index}/{vname}"] = value.detach().cpu()
                    dense_opt.setdefault(str(index), {})[vname] = [list(value.shape), str(value.dtype).split(".")[-1]]
    state_dict["rng/torch"] = torch.get_rng_state()
    rank_dir = tmp / _rank_dir(comm.rank)
    with warnings.catch_warnings():  # no_dist is the intent: disttrain's collectives coordinate the ranks
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state_dict, storage_writer=dcp.FileSystemWriter(str(rank_dir)), no_dist=True)
    files = _file_table(tmp, rank_dir)

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
            "dense": {n: list(p.shape) for n, p in _dense_parameters(par.model)},
            "optimizer": sparse.kind,
            "sparse_steps": sparse.steps,
            "dense_optimizer_state": dense_opt,
            "plan": par.plan.to_json(),
            "shards": [r for g in gathered for r in g["records"]],
            "history": history,
            "data": data or {"source": cfg.data.source},  # where the reader stands (batches are a function of step)
            "config": config_mod.to_yaml(cfg),
        }
        _write_json(tmp / META, meta)
        all_files = {k: v for g in gathered for k, v in g["files"].items()}
        all_files[META] = [(tmp / META).stat().st_size, sha256_file(tmp / META)]
        _write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": all_files})
        _fsync_dir(tmp)
        old = None
        if committed.exists():  # the same step saved again (a rerun): replace it only once the new one is whole
            old = root / f"{TMP_PREFIX}old-{committed.name}-{token}"
            committed.rename(old)
        tmp.rename(committed)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _prune(root, keep_last, keep=committed)
    comm.barrier()
    return committed


def _dense_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if not n.startswith("embeddings.")]


def _prune(root: Path, keep_last: int, *, keep: Path) -> None:
    """Drop committed checkpoints beyond the newest `keep_last` and partial ones left by crashed writers."""
    for partial in root.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(partial, ignore_errors=True)
    if keep_last > 0:
        for old in committed_checkpoints(root)[:-keep_last]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)


# ----- find and verify ------------------------------------------------------------------------------------------
def committed_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (partial `.tmp-` directories are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(spec: str, root: str, *, key: str = "train.resume", run_id: str | None = None) -> Path | None:
    """`auto`: the newest complete checkpoint in `root` (None if there is none yet); a path: that checkpoint,
    or the newest inside a checkpoint directory. `run_id`: only checkpoints that run wrote (restarts)."""
    if spec == "auto" or run_id is not None:
        if not root:
            raise ConfigError(f"{key}: got {spec!r}, but checkpoint.dir is empty; expected checkpoint.dir to be set")
        found = committed_checkpoints(root)
        if run_id is not None:
            found = [p for p in found if run_id in _read_meta_quiet(p).get("run_ids", [])]
        return found[-1] if found else None
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"{key}: {spec}: checkpoint directory not found")
    if (path / MANIFEST).is_file():
        return path
    found = committed_checkpoints(path)
    if not found:
        raise ConfigError(f"{key}: {spec}: no complete checkpoint there (expected a {STEP_PREFIX}N directory "
                          f"holding {MANIFEST}, or one itself)")
    return found[-1]


def _read_meta_quiet(path: Path) -> dict:
    try:
        return json.loads((path / META).read_text())
    except (OSError, ValueError):
        return {}


VERIFIED = "DISTTRAIN_VERIFIED_CHECKPOINT"  # set by `disttrain launch` after it hashed a checkpoint


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"checkpoint {path}: {MANIFEST} is unreadable or corrupted ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"checkpoint {path}: format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def _problems(path: Path, manifest: dict, files: list[str], *, digest: bool) -> list[str]:
    out = []
    for rel in files:
        size, expected = manifest["files"][rel]
        file = path / rel
        if not file.is_file():
            out.append(f"checkpoint {path}: {rel} is missing")
        elif file.stat().st_size != size:
            out.append(f"checkpoint {path}: {rel} is truncated or altered ({file.stat().st_size} bytes, expected {size})")
        elif digest and sha256_file(file) != expected:
            out.append(f"checkpoint {path}: {rel} is corrupted (sha256 differs from {MANIFEST})")
    return out


def _files_under(manifest: dict, dirs: set[str] | None) -> list[str]:
    return sorted(rel for rel in manifest["files"] if dirs is None or rel == META or rel.split("/", 1)[0] in dirs)


def verify(path: Path, *, only: set[str] | None = None) -> dict:
    """Check files against the manifest (all, or those under the `only` sub-directories); returns meta."""
    manifest = read_manifest(path)
    problems = _problems(path, manifest, _files_under(manifest, only), digest=True)
    if problems:
        raise DataError(problems[0])
    return json.loads((path / META).read_text())


def verify_shared(path: Path, comm, dirs: set[str]) -> dict:
    """Collective `verify`: sizes everywhere, and each file hashed by one rank only (files read by any rank,
    shared out round-robin); a checkpoint `disttrain launch` has just hashed is not hashed again."""
    manifest = read_manifest(path)
    files = _files_under(manifest, set().union(*comm.all_gather_object(sorted(dirs))))
    hashed = os.environ.get(VERIFIED) != str(path.resolve())
    mine = _problems(path, manifest, files, digest=False)
    if hashed:
        mine += _problems(path, manifest, files[comm.rank :: comm.world_size], digest=True)
    problems = sorted(p for found in comm.all_gather_object(mine) for p in found)
    if problems:
        raise DataError(problems[0])
    return json.loads((path / META).read_text())


def check_fits(meta: dict, path: Path, *, model: str, tables, dense_shapes: dict[str, list[int]]) -> None:
    """The checkpoint's model, tables and dense shapes must be this model's; name every mismatch."""
    problems = []
    if meta["model"] != model:
        problems.append(f"model {meta['model']} (this run: {model})")
    saved = {t["name"]: (t["rows"], t["dim"]) for t in meta["tables"]}
    here = {t.name: (t.num_rows, t.dim) for t in tables}
    for name in sorted(set(saved) | set(here), key=lambda n: (len(n), n)):
        if name not in here:
            problems.append(f"table {name} {saved[name][0]}x{saved[name][1]} is not in this model")
        elif name not in saved:
            problems.append(f"table {name} {here[name][0]}x{here[name][1]} is not in the checkpoint")
        elif saved[name] != here[name]:
            problems.append(f"table {name} is {saved[name][0]}x{saved[name][1]} in the checkpoint, "
                            f"{here[name][0]}x{here[name][1]} here")
    for name in sorted(set(meta["dense"]) | set(dense_shapes)):
        a, b = meta["dense"].get(name), dense_shapes.get(name)
        if a != b:
            problems.append(f"dense {name} is {a} in the checkpoint, {b} here")
    if problems:
        raise DataError(f"checkpoint {path} does not fit this model: " + "; ".join(problems))


# ----- load (resharding) ----------------------------------------------------------------------------------------
@dataclass
class Loaded:
    step: int
    history: list[dict]
    path: Path
    optimizer_restored: bool
    data: dict | None = None


class _Reader:
    """Reads saved tensors by key from the rank directories, once each."""

    def __init__(self, path: Path):
        self.path = path
        self.cache: dict[str, torch.Tensor] = {}

    def get(self, rank: int, key: str, shape: list[int], dtype=torch.float32) -> torch.Tensor:
        import torch.distributed.checkpoint as dcp

        if key not in self.cache:
            out = {key: torch.empty(shape, dtype=dtype)}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                dcp.load(out, storage_reader=dcp.FileSystemReader(str(self.path / _rank_dir(rank))), no_dist=True)
            self.cache[key] = out[key]
        return self.cache[key]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int] | None:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else None


def load_checkpoint(path: Path, *, par, comm, cfg) -> Loaded:
    """Fill this rank's shards, the dense part and the optimizers from `path`, whatever plan wrote it."""
    collection, sparse = par.embeddings, par.sparse_optimizer
    locations = collection.shard_locations()
    meta = json.loads((path / META).read_text())
    by_table: dict[str, list[dict]] = {}
    for record in meta["shards"]:
        by_table.setdefault(record["table"], []).append(record)
    # Verify what this rank will read: rank 0's files (dense part) and those of every overlapping writer.
    needed = {_rank_dir(0)}
    for table, shard, _, _ in locations:
        for rec in by_table.get(table.name, []):
            if _overlap(shard.rows, tuple(rec["rows"])) and _overlap(shard.cols, tuple(rec["cols"])):
                needed.add(_rank_dir(rec["rank"]))
    meta = verify_shared(path, comm, needed)
    check_fits(meta, path, model=cfg.model.name, tables=collection.tables,
               dense_shapes={n: list(p.shape) for n, p in _dense_parameters(par.model)})
    same_optimizer = meta["optimizer"] == sparse.kind
    reader = _Reader(path)
    kinds = SPARSE_STATE[sparse.kind] if same_optimizer else {}
    with torch.no_grad():
        for table, shard, key, base in locations:
            weight = collection.weight(key)
            opt_state = sparse._state(key, weight)
            if kinds.get("sum") is False:
                opt_state["sum"][base : base + shard.num_rows] = 0
            for rec in by_table[table.name]:
                rows, cols = _overlap(shard.rows, tuple(rec["rows"])), _overlap(shard.cols, tuple(rec["cols"]))
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
        for name, param in _dense_parameters(par.model):
            param.copy_(reader.get(0, f"dense/{name}", meta["dense"][name]))
    dense_restored = same_optimizer and _load_dense_optimizer(par.dense_optimizer, meta, reader)
    if same_optimizer:
        sparse.steps = meta["sparse_steps"]
    if meta["world_size"] == comm.world_size:
        torch.set_rng_state(reader_rng(path, comm.rank))
    return Loaded(step=meta["step"], history=meta["history"], path=path,
                  optimizer_restored=same_optimizer and dense_restored, data=meta.get("data"))


def reader_rng(path: Path, rank: int) -> torch.Tensor:
    return _Reader(path).get(rank, "rng/torch", list(torch.get_rng_state().shape), dtype=torch.uint8)


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
