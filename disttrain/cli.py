"""`disttrain` command line: train, launch, plan, bench.

    disttrain train [CONFIG] [key=value ...]      run in this process (or as a torchrun worker)
    disttrain launch [CONFIG] [key=value ...]     start workers with launch.launcher (local | torchrun | ray | horovod)
    disttrain plan [CONFIG] [key=value ...] --world-size N [--json]
    disttrain bench [key=value ...]               the kaggle DLRM throughput benchmark (2 pinned ranks)
    disttrain topology [--lscpu FILE] [--nproc-per-node N] [--affinity MODE] [--json]
    disttrain export CHECKPOINT --out FILE         one unsharded model file (inference)
    disttrain infer [CONFIG] --checkpoint PATH --mode throughput|latency|accuracy [--precision fp32|bf16]
    disttrain import REFERENCE.pt --out DIR [key=value ...]   a reference DLRM --save-model file -> checkpoint
    disttrain data criteo RAW... --out DIR [options]   raw Criteo TSV/CSV (.gz too) -> memory-mapped columns
    disttrain data verify DIR                      check a processed directory against its meta.json
    disttrain data dien-synthetic --out DIR [--samples N]   DIEN files with a planted sequential signal
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from disttrain import config as config_mod
from disttrain.errors import DisttrainError

BENCH_CONFIG = Path(__file__).parent / "configs" / "bench_kaggle.yaml"


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The first argument without '=' is the config file; the rest are overrides."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _load(items: list[str], base: str | None = None):
    path, overrides = _split_args(items)
    if path is not None and base is not None:
        raise DisttrainError(f"{path}: unexpected argument, expected key=value overrides")
    return config_mod.load_config(path or base, overrides)


def cmd_train(args) -> int:
    from disttrain.worker import run_worker

    run_worker(_load(args.items))
    return 0


def launch_world(cfg: config_mod.Config) -> tuple[int, int]:
    """(world size, ranks on this machine; 0 = not known here) for `launch.launcher`; nproc_per_node resolved."""
    nproc = int(cfg.launch.nproc_per_node)
    if cfg.launch.launcher == "ray":
        from disttrain.launchers.ray_cluster import world_size

        return world_size(cfg), 0
    if cfg.launch.launcher == "horovod":
        from disttrain.launchers.horovod import parse_hosts

        hosts = parse_hosts(cfg)
        return sum(slots for _, slots in hosts), max(slots for _, slots in hosts)
    return nproc * cfg.launch.nnodes, nproc


def prepare_launch(cfg: config_mod.Config) -> str:
    """Validate everything that can fail before any process starts (config, plan, pinning); resolve
    `launch.nproc_per_node=auto`; write the resolved config the workers will read."""
    from disttrain.runtime.backend import resolve_backend
    from disttrain.runtime.bootstrap import placements_for, resolve_nproc, user_set_variables
    from disttrain.runtime.topology import detect_topology
    from disttrain.trainer import build_plan

    # Ray workers may have GPUs the driver lacks: there nccl is checked where the workers run.
    cfg.launch.backend = resolve_backend(cfg.launch.backend, for_training=cfg.launch.launcher != "ray")
    topology = detect_topology()
    cfg.launch.nproc_per_node = resolve_nproc(cfg, topology)
    world, local = launch_world(cfg)
    if local:  # Ray workers land on whichever nodes have room and place themselves there
        placements_for(cfg, topology, nproc=local, user_env=user_set_variables(os.environ))
    model, _ = build_plan(cfg, world)
    if cfg.data.source == "criteo" and cfg.launch.launcher != "ray":  # Ray workers may see other storage
        from disttrain.data.criteo import verify_for_launch

        verify_for_launch(cfg.data.path, cfg.data.verify)
    if cfg.train.resume and cfg.launch.launcher != "ray":  # Ray workers may see other storage than the driver
        check_resume(cfg, model)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(config_mod.to_yaml(cfg))
    return str(path.resolve())


def check_resume(cfg: config_mod.Config, model) -> None:
    """Before any worker starts: the checkpoint to resume exists, is whole and fits this model."""
    from disttrain.checkpoint import VERIFIED, check_fits, find_checkpoint, verify

    path = find_checkpoint(cfg.train.resume, cfg.checkpoint.dir)
    if path is None:
        return
    meta = verify(path)
    dense = {n: list(p.shape) for n, p in model.named_parameters() if not n.startswith("embeddings.")}
    check_fits(meta, path, model=cfg.model.name, tables=model.tables, dense_shapes=dense)
    os.environ[VERIFIED] = str(path.resolve())  # the workers check sizes, not hashes, of what was just hashed


def cmd_export(args) -> int:
    from disttrain.export import export_model

    if args.items:
        raise DisttrainError(f"export: unexpected arguments {' '.join(args.items)}; expected CHECKPOINT --out FILE")
    out = export_model(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_infer(args) -> int:
    import json

    from disttrain.infer import describe, run_inference

    config = args.items[0] if args.items and "=" not in args.items[0] else None
    overrides = args.items[1:] if config else args.items
    if args.nproc > 1:
        from disttrain.infer import run_sharded_inference

        if args.runtime != "torch":
            raise DisttrainError(f"--runtime {args.runtime} with --nproc {args.nproc}: sharded inference runs on "
                                 "torch; expected --nproc 1 with onnxruntime")
        result = run_sharded_inference(args.checkpoint, nproc=args.nproc, mode=args.mode, config=config,
                                       precision=args.precision, batch_size=args.batch_size,
                                       iterations=args.iterations, exact_max_length=args.exact_max_length,
                                       overrides=overrides)
        print(json.dumps(result, indent=2) if args.json else describe(result))
        return 0
    result = run_inference(args.checkpoint, mode=args.mode, config=config, precision=args.precision,
                           runtime=args.runtime,
                           batch_size=args.batch_size, iterations=args.iterations,
                           exact_max_length=args.exact_max_length, overrides=overrides)
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return 0


def cmd_export_onnx(args) -> int:
    import json

    from disttrain.onnx_export import export_onnx

    checkpoint = args.checkpoint_opt or args.checkpoint
    if not checkpoint:
        raise DisttrainError("export-onnx: no checkpoint; expected CHECKPOINT (or --checkpoint PATH) --out FILE.onnx")
    result = export_onnx(checkpoint, args.out, overrides=[*args.items], verify_batch=args.verify_batch)
    print(json.dumps(result, indent=2) if args.json else
          f"exported {checkpoint} -> {result['onnx']} ({result['bytes'] / 2**20:.1f} MiB, opset {result['opset']}); "
          f"onnxruntime matches PyTorch on {result['verified_rows']} test rows: max |logit diff| "
          f"{result['max_abs_logit_diff']:.2g}")
    return 0


def cmd_quantize(args) -> int:
    import json

    from disttrain.quantize import describe, quantize

    report = quantize(args.checkpoint, args.out, overrides=[*args.items],
                      max_relative_auc_loss=args.max_relative_auc_loss)
    print(json.dumps(report, indent=2) if args.json else describe(report))
    return 0


def cmd_report(args) -> int:
    from disttrain.report import render

    runs = [*args.runs, *args.items]
    result = render(runs, args.out or Path(runs[0]) / "report")
    for label, missing in result["missing"].items():
        for item in missing:
            print(f"report: {label}: {item}", file=sys.stderr)
    print(f"wrote {result['html']} ({len(result['plots'])} plots: "
          f"{', '.join(Path(p).name for p in result['plots']) or 'none'})")
    return 0


def cmd_import(args) -> int:
    from disttrain.export import import_reference

    path = import_reference(args.reference, args.out, [*args.items])
    print(f"imported {args.reference} -> {path}; train or evaluate it sharded with "
          f"`disttrain launch train.resume={path} ...` (train.steps=0: evaluate only)")
    return 0


def cmd_launch(args, base: str | None = None) -> int:
    cfg = _load(args.items, base)
    return launch(cfg, prepare_launch(cfg))


def launch(cfg: config_mod.Config, config_path: str) -> int:
    """Start the workers with `launch.launcher`; the exit code of the job."""
    if cfg.launch.launcher == "torchrun":
        from disttrain.launchers.torchrun import launch_torchrun

        return launch_torchrun(cfg, config_path)
    if cfg.launch.launcher == "ray":
        from disttrain.launchers.ray_cluster import launch_ray

        return launch_ray(cfg, config_path)
    if cfg.launch.launcher == "horovod":
        from disttrain.launchers.horovod import horovodrun_path, launch_horovod

        horovodrun_path()  # a one-line error before anything starts when Horovod is missing
        return launch_horovod(cfg, config_path)
    from disttrain.launchers.local import launch_local

    return launch_local(cfg, config_path)


def cmd_plan(args) -> int:
    from disttrain.runtime.bootstrap import resolve_nproc
    from disttrain.runtime.topology import detect_topology
    from disttrain.trainer import build_plan

    cfg = _load(args.items)
    cfg.launch.nproc_per_node = resolve_nproc(cfg, detect_topology())
    world = args.world_size or launch_world(cfg)[0]
    _, plan = build_plan(cfg, world)
    print(json.dumps(plan.to_json(), indent=2) if args.json else plan.describe())
    return 0


def cmd_bench(args) -> int:
    code = cmd_launch(args, base=str(BENCH_CONFIG))
    if code == 0:
        cfg = _load(args.items, str(BENCH_CONFIG))
        summary = json.loads((Path(cfg.run.output_dir) / "summary.json").read_text())
        print(
            f"BENCH dlrm/{summary['flavor']} world_size={summary['world_size']} "
            f"global_batch={summary['global_batch_size']} samples_per_s={summary['samples_per_s']:.0f}"
        )
    return code


def cmd_topology(args) -> int:
    """The machine and each local rank's placement, without starting anything."""
    from disttrain.runtime.bootstrap import placements_for, resolve_nproc, user_set_variables
    from disttrain.runtime.topology import detect_topology

    cfg = _load(args.items)
    if args.affinity:
        cfg.launch.affinity = args.affinity
    if args.nproc_per_node:
        cfg.launch.nproc_per_node = args.nproc_per_node if args.nproc_per_node == "auto" else _positive(args.nproc_per_node)
    config_mod.validate(cfg)
    topology = detect_topology(args.lscpu)
    nproc = resolve_nproc(cfg, topology)
    placements = placements_for(cfg, topology, nproc=nproc, user_env=user_set_variables(os.environ))
    if args.json:
        machine = {
            "sockets": topology.sockets, "numa_nodes": topology.nodes,
            "physical_cores": len(topology.physical_cores()), "logical_cpus": len(topology.cpus),
            "gpus": [{"index": g.index, "numa_node": g.numa_node, "pci_bus": g.pci_bus} for g in topology.gpus],
        }
        print(json.dumps({"machine": machine, "affinity": cfg.launch.affinity,
                          "ranks": [p.to_json() for p in placements]}, indent=2))
        return 0
    from disttrain.runtime.topology import format_cpus

    print(topology.describe())
    print(f"{nproc} local rank(s), affinity {cfg.launch.affinity}:")
    for p in placements:
        cpus = format_cpus(p.cpus) if p.cpus is not None else "any"
        env = " ".join(f"{k}={v}" for k, v in p.env.items())
        gpu = f" GPU {p.gpu}" if p.gpu is not None else ""
        print(f"  local rank {p.local_rank}: CPUs {cpus} (NUMA {','.join(map(str, p.numa_nodes))}){gpu}, "
              f"{p.threads} thread(s){' [shared cores]' if p.shared else ''}  {env}")
    return 0


def cmd_data_criteo(args) -> int:
    from disttrain.data.criteo_prep import PrepOptions, prepare

    if args.items:
        raise DisttrainError(f"data criteo: unexpected arguments {' '.join(args.items)}; expected RAW... --out DIR")
    opts = PrepOptions(
        out=Path(args.out), vocab_threshold=args.vocab_threshold, hash_rows=args.hash_rows, split=args.split,
        delimiter=args.delimiter, header=args.header, label_column=args.label_column,
        dense_columns=args.dense_columns, sparse_columns=args.sparse_columns, skip_bad_rows=args.skip_bad_rows,
        workers=args.workers, force=args.force, progress=not args.quiet,
    )
    meta = prepare(args.raw, opts)
    seconds = meta["seconds"]["total"]
    bad = sum(s["bad_rows"] for s in meta["sources"])
    print(f"wrote {args.out}: {meta['rows']:,} rows in {seconds:.1f} s ({meta['rows'] / max(seconds, 1e-9):,.0f} rows/s; "
          f"parse {meta['seconds']['parse']:.1f} s, ids {meta['seconds']['ids']:.1f} s)")
    for s in meta["sources"]:
        print(f"  {s['path']}: {s['rows']:,} rows" + (f", {s['bad_rows']:,} bad rows skipped" if s["bad_rows"] else ""))
        for example in s["bad_examples"]:
            print(f"    skipped {example}")
    if bad:
        print(f"  {bad:,} bad rows skipped in all")
    splits = meta["splits"]
    print("  splits: " + ", ".join(f"{k} rows [{lo:,}, {hi:,})" for k, (lo, hi) in splits.items()))
    mode = meta["options"]["mode"]
    rule = (f"ids of values seen >= {meta['options']['vocab_threshold']} times in train, 0 = other"
            if mode == "vocabulary" else f"hash modulo {meta['options']['hash_rows']}, numbered densely")
    print(f"  tables ({mode}: {rule}): " + " ".join(f"{t['name']}={t['rows']:,}" for t in meta["tables"]))
    print(f"train on it: disttrain launch data.source=criteo data.path={args.out} ...")
    return 0


def cmd_data_dien_synthetic(args) -> int:
    import shutil

    from disttrain.data.dien import generate, write_files

    if args.items:
        raise DisttrainError(f"data dien-synthetic: unexpected arguments {' '.join(args.items)}; expected --out DIR")
    for name, flag in (("samples", "samples"), ("users", "users"), ("num_items", "items"), ("cats", "cats"),
                       ("max_history", "max-history")):
        if getattr(args, name) <= (1 if flag in ("items", "cats") else 0):
            raise DisttrainError(f"--{flag}: got {getattr(args, name)}, expected a larger positive number (items "
                                 "and categories reserve id 0 for the default)")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise DisttrainError(f"--out: {out} exists; expected a new directory (or --force to replace it)")
    data = generate(users=args.users, items=args.num_items, cats=args.cats, train_samples=args.samples, seed=args.seed,
                    max_history=args.max_history)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_files(data, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"wrote {out}: {len(data.train):,} train / {len(data.test):,} test samples, tables "
          f"uid={args.users:,} mid={args.num_items:,} cat={args.cats:,}, mean history "
          f"{data.train.history_lengths.mean():.1f}")
    print(f"train on it: disttrain launch model.name=dien data.source=dien data.path={out} ...")
    return 0


def cmd_data_verify(args) -> int:
    from disttrain.data.criteo import open_dataset

    info = open_dataset(args.dir, verify="checksum")
    print(f"{args.dir}: ok ({info.rows:,} rows, {len(info.table_rows)} tables, {len(info.meta['files'])} files "
          f"match their sha256; fingerprint {info.fingerprint})")
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise DisttrainError(f"--nproc-per-node: got {text!r}, expected a positive integer or auto")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disttrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("train", cmd_train, "train in this process (world of one, or a torchrun worker)"),
        ("launch", cmd_launch, "start workers with launch.launcher"),
        ("bench", cmd_bench, "kaggle DLRM throughput benchmark"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file and/or overrides")
        p.set_defaults(func=func)
    p = sub.add_parser("plan", help="print the sharding plan without starting processes")
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    p.add_argument("--world-size", type=int, default=0, help="ranks to plan for (default: launch settings)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("export", help="write a checkpoint as one unsharded model file for inference")
    p.add_argument("checkpoint", help="a checkpoint (step_N directory) or a checkpoint.dir (its newest)")
    p.add_argument("--out", required=True, help="the model file to write")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("infer", help="run a checkpoint in throughput, latency or accuracy mode")
    p.add_argument("--checkpoint", required=True, help="a checkpoint (or a checkpoint directory: its newest)")
    p.add_argument("--mode", required=True, choices=["throughput", "latency", "accuracy"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
                   help="int8: a `disttrain quantize` output directory as --checkpoint")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"],
                   help="onnxruntime: an `export-onnx` file as --checkpoint (or a checkpoint: exported first)")
    p.add_argument("--batch-size", type=int, default=0, help="default: the training batch (latency: 1)")
    p.add_argument("--iterations", type=int, default=0, help="timed batches/requests (default 20 / 200)")
    p.add_argument("--exact-max-length", type=int, default=0, help="DIEN: pad every history to exactly N")
    p.add_argument("--nproc", type=_positive, default=1,
                   help="serve sharded over N local worker processes (the training plan for N ranks; default 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("items", nargs="*", help="[CONFIG] [key=value ...] (default: the checkpoint's own config)")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("export-onnx", help="write Wide&Deep, DeepFM or DLRM as ONNX (checked with onnxruntime)")
    p.add_argument("checkpoint", nargs="?", default="", help="a checkpoint (or a checkpoint directory: its newest)")
    p.add_argument("--checkpoint", dest="checkpoint_opt", default="", help="the same, as an option")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--verify-batch", type=int, default=1024, help="test rows compared with PyTorch (default 1024)")
    p.add_argument("--json", action="store_true")
    p.add_argument("items", nargs="*", metavar="key=value", help="data overrides (data.path=...)")
    p.set_defaults(func=cmd_export_onnx)
    p = sub.add_parser("quantize", help="int8 post-training quantization with a layer-wise AUC guard")
    p.add_argument("--checkpoint", required=True, help="a checkpoint (or a checkpoint directory: its newest)")
    p.add_argument("--out", required=True, help="directory to write: model_int8.pt and quant_report.json")
    p.add_argument("--max-relative-auc-loss", type=float, default=None,
                   help="default: quant.max_relative_auc_loss (0.01)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("items", nargs="*", metavar="key=value", help="overrides (data.path=..., quant.*)")
    p.set_defaults(func=cmd_quantize)
    p = sub.add_parser("report", help="PNG plots and one HTML page of one or more runs (overlaid)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (run.output_dir)")
    p.add_argument("--out", default="", help="directory for report.html and the PNGs (default: RUN_DIR/report)")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("import", help="turn a reference dlrm_s_pytorch.py --save-model file into a checkpoint")
    p.add_argument("reference", help="the reference DLRM checkpoint file")
    p.add_argument("--out", required=True, help="checkpoint directory to write (a step_00000000 inside)")
    p.add_argument("items", nargs="*", metavar="key=value", help="config overrides (model.flavor=kaggle, ...)")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("topology", help="print the machine and the per-rank pinning plan")
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    p.add_argument("--lscpu", default=None, help="canned `lscpu -p=CPU,CORE,SOCKET,NODE` output to plan for")
    p.add_argument("--nproc-per-node", default="", help="local ranks (default: the config's; auto allowed)")
    p.add_argument("--affinity", default="", choices=["", *config_mod.AFFINITIES])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_topology)
    data = sub.add_parser("data", help="prepare datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("criteo", help="raw Criteo logs (Kaggle train.txt, Terabyte day_N, .gz, CSV) -> DIR",
                        description="Parse raw Criteo rows on every core, map categoricals to contiguous ids, "
                                    "transform dense features with log(1+x), write memory-mappable columns.")
    p.add_argument("raw", nargs="+", help="raw files in order (Kaggle: train.txt; Terabyte: day_0 ... day_23)")
    p.add_argument("--out", required=True, help="directory to write (appears only once complete)")
    p.add_argument("--vocab-threshold", type=int, default=1,
                   help="ids for values seen at least this often in the train split; others share id 0 (default 1)")
    p.add_argument("--hash-rows", "--max-ind-range", dest="hash_rows", type=int, default=0,
                   help="instead of a vocabulary: hash modulo N and number the results densely (the reference)")
    p.add_argument("--split", default="auto",
                   help="kaggle (7 days, last -> test/val halves), days (last file -> test/val), files "
                        "(train[, val], test files), none, ratio:A,B,C; auto: kaggle for one file, days for more")
    p.add_argument("--delimiter", default="auto", help="tab, comma or auto (default)")
    p.add_argument("--header", default="auto", choices=["auto", "yes", "no"], help="first line is a header")
    p.add_argument("--label-column", default="", help="column of the label (name with a header, or index)")
    p.add_argument("--dense-columns", default="", help="integer feature columns, e.g. I1,I2 or 1-13")
    p.add_argument("--sparse-columns", default="", help="categorical columns, e.g. C1,C2 or 14-39")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip, count and report malformed rows")
    p.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
    p.add_argument("--force", action="store_true", help="replace an existing processed directory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_data_criteo)
    p = data.add_parser("dien-synthetic", help="DIEN samples with a planted sequential signal, in the benchmark's files",
                        description="Write local_train_splitByUser, local_test_splitByUser, the three vocabulary "
                                    "pickles, item-info and reviews-info, as DIEN_TF2 reads them.")
    p.add_argument("--out", required=True, help="directory to write (appears only once complete)")
    p.add_argument("--samples", type=int, default=100000, help="training samples (the test split is a tenth)")
    p.add_argument("--users", type=int, default=543060, help="uid vocabulary size (Amazon Books: 543,060)")
    p.add_argument("--items", dest="num_items", type=int, default=367983,
                   help="mid vocabulary size (Amazon Books: 367,983)")
    p.add_argument("--cats", type=int, default=1601, help="cat vocabulary size (Amazon Books: 1,601)")
    p.add_argument("--max-history", type=int, default=100, help="longest history generated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing directory")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_data_dien_synthetic)
    p = data.add_parser("verify", help="check a processed directory's files against its meta.json (sha256)")
    p.add_argument("dir")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_data_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may stand on either side of options (`plan cfg.yaml --world-size 2 train.batch_size=8`).
    args, extra = parser.parse_known_args(argv)
    unknown = [item for item in extra if item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.items = [*args.items, *extra]
    try:
        return args.func(args)
    except DisttrainError as exc:
        print(f"disttrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `disttrain ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def entry() -> None:
    """Console entry point: `train` ends like a worker (no interpreter teardown after communication)."""
    code = main()
    if "torch" not in sys.modules:  # commands that never touched torch (data, plan checks) exit normally
        sys.exit(code)
    from disttrain.worker import exit_now

    exit_now(code)


if __name__ == "__main__":
    entry()
