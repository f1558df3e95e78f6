"""Tabular data path speed, in one run: `disttrain data prepare` beside polars doing the same work, the prepared-data
loader against what 2-rank training consumes, and that loader reading s3:// (a loopback SeaweedFS) against local disk.

    python benchmarks/data_prepare.py [--rows 1000000] [--parts prepare,loader,s3] [--repeat 2] [--out FILE]

Input: a generated Parquet file (8 row groups, --seed): label 0/1; dense price (1% null, log1p), age
(standardize), score (float32, minmax), clicks (int, none); categorical user (string "u123", Zipf, vocabulary
min_count 2), item (int, Zipf, vocabulary), device (string, hashed into --hash-rows) and tags (list<string> of
0..8 values: multi-hot, max_length 5, vocabulary).

1. prepare: the real CLI (`data prepare --schema S --workers 1|2`) as a subprocess, wall time, shown with and
   without its start-up (interpreter + the command's imports; measured apart) and by its own
   meta.json seconds. polars (a subprocess too) does the same: read, training-split (first 90%) statistics and
   transforms, vocabularies (training counts, min_count, ids 1.. most frequent first, 0 = out of vocabulary;
   ties by value, disttrain breaks them by FNV key), polars' own hash for the hashed column (not FNV-1a),
   multi-hot nulls/empties dropped, cut to max_length, mapped, offsets + values, numpy files. Rounds are
   interleaved, best of --repeat; the outputs are compared (labels, dense, per-id counts, offsets).
2. loader: `CriteoData` training-order global batches (one reader per rank, both ranks' halves read by one
   process) against summary.json samples_per_s of a 2-rank `disttrain launch` of DLRM `kaggle` on the same data.
3. s3: the dataset uploaded; the same batches read from s3:// (fresh readers: cold block caches; then again,
   warm) and from local disk (page cache warmed); the reader's requests counted by wrapping `cat_ranges`.

Writes nothing into the repository unless --out FILE (the data goes to a temporary directory, or --workdir).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DENSE = {"price": "log1p", "age": "standardize", "score": "minmax", "clicks": "none"}
VOCAB = {"user": 2, "item": 1, "tags": 1}  # vocabulary features -> min_count
MAX_LENGTH = 5
TRAIN_FRACTION = 0.9  # disttrain's split of one input file: ratio:90,5,5


def schema_yaml(hash_rows: int) -> str:
    return ("label: label\ndense:\n" + "".join(f"  {k}: {v}\n" for k, v in DENSE.items())
            + "categorical:\n  user: {min_count: 2}\n  item: {}\n"
            + f"  device: {{hash: {hash_rows}}}\n  tags: {{multi_hot: {{max_length: {MAX_LENGTH}}}}}\n")


def generate(path: Path, rows: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)

    def text(prefix: str, ints: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ints), pa.string()), "")

    user = np.minimum(rng.zipf(1.2, rows), 300_000)
    lengths = rng.integers(0, 9, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    logit = (user % 3 - 1) * 0.8 + (lengths - 4) * 0.2 - 1.0
    table = pa.table({
        "label": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64),
        "price": pa.array(np.round(rng.exponential(20.0, rows), 2), mask=rng.random(rows) < 0.01),
        "age": rng.normal(40.0, 12.0, rows).round(1),
        "score": rng.random(rows, dtype=np.float32),
        "clicks": rng.poisson(3.0, rows).astype(np.int64),
        "user": text("u", user),
        "item": np.minimum(rng.zipf(1.1, rows), 1_000_000).astype(np.int64),
        "device": text("d", rng.integers(0, 2_000_000, rows)),
        "tags": pa.ListArray.from_arrays(pa.array(offsets), text("t", np.minimum(rng.zipf(1.3, offsets[-1]), 50_000))),
    })
    pq.write_table(table, path, row_group_size=-(-rows // 8))


# ---- 1. prepare -----------------------------------------------------------------------------------------------

def polars_peer(parquet: str, out: str, hash_rows: int) -> None:
    """The same transformation in polars (run as a subprocess); prints SECONDS of the work itself."""
    import polars as pl

    start = time.perf_counter()
    out_dir = Path(out)
    (out_dir / "multi").mkdir(parents=True)
    (out_dir / "vocab").mkdir()
    df = pl.read_parquet(parquet)
    n = df.height
    train = int(round(n * TRAIN_FRACTION))

    def vocab_ids(values: pl.Series, train_values: pl.Series, min_count: int, name: str) -> np.ndarray:
        counts = train_values.value_counts(name="n", parallel=True).filter(pl.col("n") >= min_count)
        vocab = counts.sort(["n", values.name], descending=[True, False])[values.name]
        vocab.to_frame().write_ipc(out_dir / "vocab" / f"{name}.arrow")
        ids = values.replace_strict(vocab, pl.int_range(1, vocab.len() + 1, eager=True), default=0,
                                    return_dtype=pl.Int32)
        return ids.to_numpy()

    df["label"].cast(pl.UInt8).to_numpy().tofile(out_dir / "labels.u8")
    exprs = []
    for name, kind in DENSE.items():
        x = pl.col(name).cast(pl.Float64).fill_null(0.0)
        t = x.head(train)
        if kind == "log1p":
            x = x.clip(lower_bound=0.0).log1p()
        elif kind == "standardize":
            x = (x - t.mean()) / t.std(ddof=0)
        elif kind == "minmax":
            x = (x - t.min()) / (t.max() - t.min())
        exprs.append(x.cast(pl.Float32))
    np.ascontiguousarray(df.select(exprs).to_numpy()).tofile(out_dir / "dense.f32")
    sparse = np.empty((3, n), dtype=np.int32)
    for slot, name in enumerate(("user", "item")):
        sparse[slot] = vocab_ids(df[name], df[name].head(train), VOCAB[name], name)
    sparse[2] = (df["device"].hash(seed=0) % hash_rows).cast(pl.Int32).to_numpy()
    sparse.tofile(out_dir / "sparse.i32")
    tags = df["tags"].list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
    tags = tags.list.head(MAX_LENGTH)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(tags.list.len().to_numpy(), out=offsets[1:])
    values = tags.explode(empty_as_null=False, keep_nulls=False)
    vocab_ids(values, values.head(int(offsets[train])), VOCAB["tags"], "tags").tofile(out_dir / "multi/tags.values.i32")
    offsets.tofile(out_dir / "multi" / "tags.offsets.i64")
    print(f"SECONDS {time.perf_counter() - start:.4f}")


def run(cmd: list[str], **kw) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


def best(cmd: list[str], times: int = 3) -> float:
    return min(run(cmd)[0] for _ in range(times))


def compare_outputs(ours: Path, peer: Path, rows: int) -> list[str]:
    """Where the polars outputs differ from disttrain's (the hashed column is not compared: other hash)."""
    meta = json.loads((ours / "meta.json").read_text())
    problems = []
    if not np.array_equal(np.fromfile(ours / "labels.u8", np.uint8), np.fromfile(peer / "labels.u8", np.uint8)):
        problems.append("labels differ")
    a, b = np.fromfile(ours / "dense.f32", np.float32), np.fromfile(peer / "dense.f32", np.float32)
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-4):
        problems.append(f"dense differs (max abs diff {np.abs(a - b).max() if a.shape == b.shape else 'shape'})")
    s_ours, s_peer = np.fromfile(ours / "sparse.i32", np.int32).reshape(3, rows), np.fromfile(
        peer / "sparse.i32", np.int32).reshape(3, rows)
    offsets = np.fromfile(ours / "multi/tags.offsets.i64", np.int64)
    train = meta["splits"]["train"][1]
    pairs = {"user": (s_ours[0], s_peer[0], train), "item": (s_ours[1], s_peer[1], train),
             "tags": (np.fromfile(ours / "multi/tags.values.i32", np.int32),
                      np.fromfile(peer / "multi/tags.values.i32", np.int32), int(offsets[train]))}
    for name, (x, y, t) in pairs.items():  # same rule <=> same training count per id, ids one-to-one
        if x.shape != y.shape or not np.array_equal(np.bincount(x[:t]), np.bincount(y[:t])) or \
                np.unique(x.astype(np.int64) << 32 | y).size != np.unique(x).size:
            problems.append(f"{name} ids follow another rule")
    if not np.array_equal(offsets, np.fromfile(peer / "multi/tags.offsets.i64", np.int64)):
        problems.append("tags offsets differ")
    if s_peer[2].max() >= meta["tables"][2]["rows"]:
        problems.append("device hash ids out of range")
    return problems


def part_prepare(args, work: Path, parquet: Path, rows: int, results: dict) -> Path:
    schema = work / "schema.yaml"
    schema.write_text(schema_yaml(args.hash_rows))
    py = sys.executable
    bare = best([py, "-m", "disttrain.cli", "--version"], 5)
    startup = best([py, "-c", "import disttrain.cli.commands, disttrain.prepare.tabular, disttrain.worker as w; "
                          "w.exit_now(0)"], 5)  # the CLI leaves the same way (no teardown)
    polars_startup = best([py, "-c", "import numpy, polars"], 5)
    print(f"start-up: `disttrain --version` {bare:.2f} s; interpreter + the imports of `data prepare` "
          f"{startup:.2f} s; interpreter + numpy + polars {polars_startup:.2f} s", flush=True)
    walls: dict[str, list[float]] = {}
    inner: dict[str, list[float]] = {}
    for round_index in range(args.repeat):
        for workers in (1, 2):
            name = f"disttrain --workers {workers}"
            out = work / f"prepared_w{workers}"
            wall, _ = run([py, "-m", "disttrain.cli", "data", "prepare", str(parquet), "--schema", str(schema),
                           "--out", str(out), "--workers", str(workers), "--force", "--quiet"])
            walls.setdefault(name, []).append(wall)
            inner.setdefault(name, []).append(json.loads((out / "meta.json").read_text())["seconds"]["total"])
        peer = work / "polars_out"
        shutil.rmtree(peer, ignore_errors=True)
        wall, text = run([py, __file__, "--peer", str(parquet), str(peer), str(args.hash_rows)])
        walls.setdefault("polars", []).append(wall)
        inner.setdefault("polars", []).append(float(text.split("SECONDS")[1].split()[0]))
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items()), flush=True)
    problems = compare_outputs(work / "prepared_w2", work / "polars_out", rows)
    rates = {}
    for name in walls:
        wall, start = min(walls[name]), polars_startup if name == "polars" else startup
        rates[name] = {"wall": rows / wall, "work": rows / max(wall - start, 1e-9), "inner": rows / min(inner[name])}
    for workers in (1, 2):
        for key, what in (("wall", "wall"), ("work", "w/o start-up"), ("inner", "in-process")):
            results["rows"].append((f"prepare rows/s, --workers {workers}, {what}",
                                    rates[f"disttrain --workers {workers}"][key], rates["polars"][key]))
    seconds = json.loads((work / "prepared_w2" / "meta.json").read_text())["seconds"]
    print(f"disttrain --workers 2 phases (last run): read+hash {seconds['read']:.2f} s, ids+dense "
          f"{seconds['ids']:.2f} s, total {seconds['total']:.2f} s; outputs agree with polars' (labels, dense, "
          "vocabulary rule per id, offsets): " + ("yes" if not problems else "NO: " + "; ".join(problems)), flush=True)
    results["outputs agree"] = not problems
    return work / "prepared_w2"


# ---- 2. loader against training ------------------------------------------------------------------------------

def readers(path: str, batch: int, world: int = 2) -> list:
    """One reader per rank, as the ranks of a training run have."""
    from disttrain.data.prepared import CriteoData, open_dataset
    from disttrain.tables import EmbeddingTableSpec

    info = open_dataset(path)
    tables = [EmbeddingTableSpec(t["name"], int(t["rows"]), 16, t.get("pooling", "sum")) for t in info.meta["tables"]]
    return [CriteoData(info, tables, global_batch=batch, seed=0) for _ in range(world)]


def read_rate(rs: list, steps: range, batch: int) -> float:
    start = time.perf_counter()
    for step in steps:
        for rank, reader in enumerate(rs):
            reader.batch(step, rank=rank, world_size=len(rs))
    return len(steps) * batch / (time.perf_counter() - start)


def train_rate(args, data: str, out: Path) -> float:
    """samples/s of a 2-rank DLRM (kaggle flavor) training on `data` (a directory or a URL)."""
    run([sys.executable, "-m", "disttrain.cli", "launch", "data.source=prepared", f"data.path={data}",
         "data.verify=size", "launch.nproc_per_node=2", "model.name=dlrm", "model.flavor=kaggle",
         f"train.batch_size={args.batch}", f"train.steps={args.train_steps}", "train.warmup_steps=10",
         "train.log_every=1000", "data.eval_batches=1", "run.progress=false", "run.tensorboard=false",
         f"run.output_dir={out}"], timeout=1800)
    return json.loads((out / "summary.json").read_text())["samples_per_s"]


def part_loader(args, work: Path, data: Path, results: dict) -> None:
    rs = readers(str(data), args.batch)
    read_rate(rs, range(0, 1), args.batch)  # the windows' permutations, the page cache
    loading = read_rate(rs, range(1, args.loader_steps + 1), args.batch)
    training = train_rate(args, str(data), work / "train_run")
    results["rows"].append(("loader vs 2-rank training, samples/s", loading, training))
    print(f"\nloader: {loading:,.0f} samples/s (global batches of {args.batch}, both ranks' halves, one process)\n"
          f"training: {training:,.0f} samples/s (2-rank `disttrain launch`, DLRM kaggle, {args.train_steps} steps)\n"
          f"  loader / training = {loading / training:.1f}x (the issue asks >= 10x)", flush=True)


# ---- 3. S3 against local disk --------------------------------------------------------------------------------

def free_ports(count: int) -> list[int]:
    """Ports free themselves and at +10000 (SeaweedFS's gRPC ports), all distinct."""
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < count:
        port = random.randint(20000, 45000)
        if {port, port + 10000} & taken:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        taken |= {port, port + 10000}
        chosen.append(port)
    return chosen


def start_seaweed(work: Path):
    """`weed server` with an S3 gateway on free ports and a bucket `bench`; retried when weed loses a port."""
    import s3fs

    for _ in range(3):
        s3, master, volume, filer, metrics = free_ports(5)
        shutil.rmtree(work / "weed", ignore_errors=True)
        (work / "weed").mkdir()
        with open(work / "weed.log", "ab") as log:
            proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "weed"), "server", f"-dir={work / 'weed'}", "-ip=127.0.0.1",
                 "-ip.bind=127.0.0.1", "-s3", f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}",
                 f"-filer.port={filer}", f"-metricsPort={metrics}", "-master.telemetry=false",
                 "-s3.port.iceberg=0", "-s3.port.lance=0"],  # those two listen on fixed ports by default
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3}", AWS_ACCESS_KEY_ID="any",
                          AWS_SECRET_ACCESS_KEY="any", AWS_DEFAULT_REGION="us-east-1")
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                fs.mkdir("bench")
                return proc, fs
            except FileExistsError:
                return proc, fs
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        stop(proc)
    sys.exit(f"SeaweedFS did not start; see {work / 'weed.log'}")


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def part_s3(args, work: Path, data: Path, results: dict) -> None:
    proc, fs = start_seaweed(work)
    try:
        files = [p for p in data.rglob("*") if p.is_file()]
        start = time.perf_counter()
        for p in files:
            fs.put_file(str(p), f"bench/prepared/{p.relative_to(data)}")
        size = sum(p.stat().st_size for p in files)
        print(f"\ns3: uploaded {size / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s", flush=True)
        steps = range(args.s3_steps)
        for p in files:  # the page cache, for the local side
            p.read_bytes()
        local = read_rate(readers(str(data), args.batch), steps, args.batch)
        remote_readers = readers("s3://bench/prepared", args.batch)
        counts = {"calls": 0, "ranges": 0, "bytes": 0, "seconds": 0.0}
        store_fs = remote_readers[0].info.store.fs
        original = store_fs.cat_ranges

        def counted(paths, starts, ends, **kw):
            t = time.perf_counter()
            out = original(paths, starts, ends, **kw)
            for k, v in (("seconds", time.perf_counter() - t), ("calls", 1), ("ranges", len(paths)),
                         ("bytes", sum(ends) - sum(starts))):
                counts[k] += v
            return out

        store_fs.cat_ranges = counted
        log = []  # per global batch: seconds, cat_ranges calls, GETs, bytes, seconds waiting
        for step in steps:
            before, t = dict(counts), time.perf_counter()
            for rank, reader in enumerate(remote_readers):
                reader.batch(step, rank=rank, world_size=2)
            log.append([time.perf_counter() - t] + [counts[k] - before[k] for k in ("calls", "ranges", "bytes",
                                                                                      "seconds")])
        counts.update(calls=0)
        warm = read_rate(remote_readers, steps, args.batch)
        store_fs.cat_ranges = original
        # What a user sees: 2-rank training reading from each (rounds interleaved, the best of each kept).
        trained = {"local": 0.0, "s3": 0.0}
        for r in range(args.repeat):
            for name, where in (("local", str(data)), ("s3", "s3://bench/prepared")):
                trained[name] = max(trained[name], train_rate(args, where, work / f"train_{name}_{r}"))
    finally:
        stop(proc)
    log = np.array(log)
    cold = len(steps) * args.batch / log[:, 0].sum()
    fetching = log[:, 1] > 0
    results["rows"] += [("s3 cold vs local, samples/s", cold, local), ("s3 warm vs local, samples/s", warm, local),
                        ("2-rank training, s3 vs local, samples/s", trained["s3"], trained["local"])]
    print(f"same {len(steps)} global batches of {args.batch} (2 rank readers each), training order:\n"
          f"  local disk (page cache warm): {local:,.0f} samples/s\n"
          f"  s3:// fresh readers (cold block cache): {cold:,.0f} samples/s = {cold / local:.2f}x local\n"
          f"  s3:// second pass (block cache warm, {counts['calls']} requests): {warm:,.0f} samples/s = "
          f"{warm / local:.2f}x local\n"
          f"  cold pass: {int(log[:, 1].sum())} cat_ranges calls in {int(fetching.sum())} of {len(steps)} batches, "
          f"{int(log[:, 2].sum())} GETs of <= 1 MiB, {log[:, 3].sum() / 2**20:.1f} MiB fetched "
          f"({log[:, 3].sum() / size:.1f}x the dataset), {log[:, 4].sum():.2f} s waiting on them of "
          f"{log[:, 0].sum():.2f} s;\n  the first batch {log[0, 0]:.2f} s ({int(log[0, 1])} calls, "
          f"{int(log[0, 2])} GETs, {log[0, 3] / 2**20:.1f} MiB); batches without requests "
          f"{1e3 * log[~fetching, 0].mean() if (~fetching).any() else float('nan'):.2f} ms each vs local "
          f"{1e3 * args.batch / local:.2f} ms\n"
          f"2-rank DLRM training, best of {args.repeat}: from s3:// {trained['s3']:,.0f} samples/s, from local disk "
          f"{trained['local']:,.0f} samples/s = {trained['s3'] / trained['local']:.2f}x", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="prepare,loader,s3", help="comma-separated: prepare, loader, s3")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds of the prepare timings")
    parser.add_argument("--hash-rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=2048, help="global batch of the loader and the training")
    parser.add_argument("--loader-steps", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--s3-steps", type=int, default=200)
    parser.add_argument("--workdir", help="keep the data here (default: a temporary directory, removed)")
    parser.add_argument("--out", help="also write the summary to this file")
    parser.add_argument("--peer", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        polars_peer(args.peer[0], args.peer[1], int(args.peer[2]))
        return 0
    parts = set(args.parts.split(","))
    if parts - {"prepare", "loader", "s3"}:
        parser.error(f"--parts: expected prepare, loader and/or s3, got {args.parts}")
    with tempfile.TemporaryDirectory(prefix="bench_data_prepare_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        parquet = work / f"events_{args.rows}_{args.seed}.parquet"
        if not parquet.exists():
            generate(parquet, args.rows, args.seed)
        print(f"input: {parquet} ({args.rows:,} rows, {parquet.stat().st_size / 2**20:.1f} MiB, 8 row groups)",
              flush=True)
        results: dict = {"rows": []}
        data = work / "prepared_w2"
        if "prepare" in parts or not (data / "meta.json").exists():
            data = part_prepare(args, work, parquet, args.rows, results)
        if "loader" in parts:
            part_loader(args, work, data, results)
        if "s3" in parts:
            part_s3(args, work, data, results)
    lines = [f"summary ({args.rows:,} rows, {os.cpu_count()} CPUs; peer: polars / training / local disk)",
             f"  {'':44} {'disttrain':>11} {'peer':>11} {'ratio':>7}"]
    lines += [f"  {name:44} {ours:11,.0f} {peer:11,.0f} {ours / peer:6.2f}x" for name, ours, peer in results["rows"]]
    if "outputs agree" in results:
        lines.append(f"  prepare outputs agree with polars': {'yes' if results['outputs agree'] else 'NO'}")
    print("\n" + "\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
