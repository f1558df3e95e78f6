"""What each `disttrain` verb does: read the arguments, call the Python API (`disttrain.api`) or the layer below,
print the result."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from disttrain.errors import DisttrainError


def _api():
    """The API, imported when a command needs it (`data prepare` and `data criteo` start without it and torch)."""
    from disttrain import api

    return api


def _config():
    from disttrain import config

    return config

BENCH_CONFIG = "bench_kaggle"  # a ready config (cluster_configs/bench_kaggle.yaml, shipped in the package)


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The first argument without '=' is the config file; the rest are overrides."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _load(items: list[str], base: str | None = None):
    path, overrides = _split_args(items)
    if path is not None and base is not None:
        raise DisttrainError(f"{path}: unexpected argument, expected key=value overrides")
    return _api().load_config(path or base, overrides)


def cmd_train(args) -> int:
    from disttrain.runtime.env import this_rank
    from disttrain.runtime.signals import PREEMPTED, Preempted

    try:
        _api().train(_load(args.items), reexec=True)
    except Preempted as stop:
        if this_rank() == "0":
            print(f"disttrain: {stop}", file=sys.stderr, flush=True)
        return PREEMPTED
    return 0


def cmd_export(args) -> int:
    plain = [item for item in args.items if "=" not in item]
    if plain:
        raise DisttrainError(f"export: unexpected arguments {' '.join(plain)}; expected CHECKPOINT --out FILE "
                             "[key=value ...]")
    out = _api().export(args.checkpoint, args.out, overrides=args.items)
    print(f"exported {args.checkpoint} -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_infer(args) -> int:
    from disttrain.serving.infer import describe

    config, overrides = _split_args(args.items)
    result = _api().infer(args.checkpoint, mode=args.mode, precision=args.precision, runtime=args.runtime,
                       nproc=args.nproc, batch_size=args.batch_size, iterations=args.iterations,
                       exact_max_length=args.exact_max_length, config=config, overrides=overrides)
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return 0


def cmd_export_onnx(args) -> int:
    from disttrain.serving.onnx_export import export_onnx

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
    from disttrain.serving.quantize import describe

    report = _api().quantize(args.checkpoint, args.out, overrides=[*args.items],
                          max_relative_auc_loss=args.max_relative_auc_loss)
    print(json.dumps(report, indent=2) if args.json else describe(report))
    return 0


def cmd_report(args) -> int:
    from disttrain.report import render

    runs = [*args.runs, *args.items]
    result = render(runs, args.out or None)
    for label, missing in result["missing"].items():
        for item in missing:
            print(f"report: {label}: {item}", file=sys.stderr)
    print(f"wrote {result['html']} ({len(result['plots'])} plots: "
          f"{', '.join(Path(p).name for p in result['plots']) or 'none'})")
    return 0


def cmd_import(args) -> int:
    from disttrain.serving.reference_import import import_reference

    path = import_reference(args.reference, args.out, [*args.items])
    print(f"imported {args.reference} -> {path}; train or evaluate it sharded with "
          f"`disttrain launch train.resume={path} ...` (train.steps=0: evaluate only)")
    return 0


def cmd_launch(args, base: str | None = None) -> int:
    try:
        _api().launch(_load(args.items, base))
    except _api().JobFailed as failed:
        return failed.code
    return 0


def cmd_plan(args) -> int:
    if args.simulate:
        from disttrain.engine.simulate import describe, parse_worlds, simulate
        from disttrain.launch import launch_world

        worlds, cfg = parse_worlds(args.simulate), _load(args.items)
        result = simulate(cfg, worlds, batch_per_rank=args.batch_per_rank, base_world=launch_world(cfg)[0])
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "simulate.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2) if args.json else describe(result))
        return 0
    report = _api().plan(_load(args.items), args.world_size or None)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.describe())
    return 0


def cmd_probe(args) -> int:
    """Launch the job's workers to measure the cost model's rates; probe.json in run.output_dir (and --out)."""
    from disttrain.engine.outputs import run_dir
    from disttrain.engine.probe import describe
    from disttrain.launch import launch_as

    cfg = _load(args.items)
    code = launch_as(cfg, "probe")
    if code != 0:
        raise DisttrainError(f"the probe's workers failed (exit code {code}); their errors are above")
    written = run_dir(cfg) / "probe.json"
    if not written.is_file():  # another node ran rank 0 and wrote it
        return 0
    result = json.loads(written.read_text())
    target = Path(args.out) if args.out else written
    if args.out:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(written.read_text())
    print(json.dumps(result, indent=2) if args.json else describe(result)
          + f"\nwritten to {target}; plan with it: cluster.probe={target}")
    return 0


def cmd_config(args) -> int:
    """`config list` (the ready configs), `config show [CONFIG] [key=value ...]` (resolved, checked),
    `config keys` (every key, its default and meaning: the schema)."""
    from disttrain.config_schema import keys, markdown_rows

    if args.config_command == "list":
        if args.items:
            raise DisttrainError(f"config list: unexpected arguments {' '.join(args.items)}")
        ready = _config().ready_configs()
        if args.json:
            print(json.dumps(ready, indent=2))
        else:
            width = max(map(len, ready))
            print("\n".join(f"{name:<{width}}  {text}" for name, text in ready.items()))
            print("run one: disttrain launch NAME [key=value ...]; see it: disttrain config show NAME")
        return 0
    if args.config_command == "show":
        cfg = _load(args.items)
        print(json.dumps(_config().to_dict(cfg), indent=2) if args.json else _config().to_yaml(cfg), end="")
        return 0
    if args.items:
        raise DisttrainError(f"config keys: unexpected arguments {' '.join(args.items)}")
    if args.json:
        print(json.dumps([{"key": k.path, "default": k.default, "meaning": k.help} for k in keys()], indent=2))
    elif args.markdown:
        print("\n".join(markdown_rows()))
    else:
        width = max(len(k.path) for k in keys())
        for k in keys():
            print(f"{k.path:<{width}}  {json.dumps(k.default)}\n{'':<{width}}  {k.help}")
        print("\nnames the registries know (model.name also takes package.module:attribute, as does data.source):")
        for key, names in _api().registries().items():
            print(f"  {key}: {', '.join(names)}")
    return 0


def cmd_bench(args) -> int:
    cfg = _load(args.items, BENCH_CONFIG)
    warmup = cfg.train.warmup_steps if cfg.train.warmup_steps >= 0 else min(5, cfg.train.steps // 5)
    if cfg.train.steps - warmup - cfg.train.profile_steps <= 0:
        raise DisttrainError(f"train.steps: got {cfg.train.steps} with train.warmup_steps={warmup}"
                             + (f" and train.profile_steps={cfg.train.profile_steps}" if cfg.train.profile_steps else "")
                             + "; expected more steps than that: the benchmark times the steps after them")
    from disttrain.engine.roofline import gemm_gflops, roofline, run_dtype

    cores = len(os.sched_getaffinity(0))
    before = gemm_gflops(run_dtype(cfg), cores, seconds=0.5)  # on an idle machine, before the workers start
    code = cmd_launch(args, base=BENCH_CONFIG)
    if code == 0:
        from disttrain.engine.outputs import published_summary

        summary = published_summary(cfg)
        threads = sum(w.get("threads", 1) for w in summary.get("workers") or [{}])
        limit = roofline(cfg, summary["samples_per_s"], threads, measured_before=before if threads == cores else 0.0)
        print(f"roofline: {limit['flops_per_sample'] / 1e6:.2f} MFLOP per sample (forward + backward matmuls); "
              f"{limit['gemm_dtype']} GEMM {limit['gemm_gflops']:.0f} GFLOP/s on {threads} thread(s) -> at most "
              f"{limit['limit_samples_per_s']:,.0f} samples/s; this run reached {limit['share']:.0%}")
        print(
            f"BENCH {summary['model']}/{summary['flavor']} world_size={summary['world_size']} "
            f"global_batch={summary['global_batch_size']} samples_per_s={summary['samples_per_s']:.0f} "
            f"roofline_share={limit['share']:.3f}"
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
        cfg.launch.nproc_per_node = args.nproc_per_node if args.nproc_per_node == "auto" else positive(args.nproc_per_node)
    _config().validate(cfg)
    topology = detect_topology(args.lscpu)
    nproc = resolve_nproc(cfg, topology)
    placements = placements_for(cfg, topology, nproc=nproc, user_env=user_set_variables())
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
    from disttrain.prepare.criteo import prepare
    from disttrain.prepare.criteo_inputs import PrepOptions

    if args.items:
        raise DisttrainError(f"data criteo: unexpected arguments {' '.join(args.items)}; expected RAW... --out DIR")
    opts = PrepOptions(
        out=Path(args.out), vocab_threshold=args.vocab_threshold, hash_rows=args.hash_rows, split=args.split,
        delimiter=args.delimiter, header=args.header, label_column=args.label_column,
        dense_columns=args.dense_columns, sparse_columns=args.sparse_columns, skip_bad_rows=args.skip_bad_rows,
        workers=args.workers, force=args.force, progress=not args.quiet, id_order=args.id_order,
        vocab_dicts=args.vocab_dicts,
    )
    meta = prepare(args.raw, opts)
    _print_written(args.out, meta, "parse")
    mode = meta["options"]["mode"]
    options = meta["options"]
    rule = (f"ids of values seen >= {options['vocab_threshold']} times in train, 0 = other"
            if mode == "vocabulary" else f"hash modulo {options['hash_rows']}, numbered densely")
    if options["id_order"] == "first-seen":
        rule += ", in order of first appearance (the reference's ids)"
    elif options["vocab_dicts"]:
        unseen = sum(t.get("unseen_rows", 0) for t in meta["tables"])
        rule += f", ids from the reference's dictionaries in {options['vocab_dicts']} ({unseen:,} unseen values -> 0)"
    print(f"  tables ({mode}: {rule}): " + " ".join(f"{t['name']}={t['rows']:,}" for t in meta["tables"]))
    print(f"train on it: disttrain launch data.source=criteo data.path={args.out} ...")
    return 0


def _print_written(out: str, meta: dict, first_phase: str) -> None:
    """What `data criteo` and `data prepare` wrote: rows, speed, sources (bad rows skipped), splits."""
    seconds = meta["seconds"]
    print(f"wrote {out}: {meta['rows']:,} rows in {seconds['total']:.1f} s "
          f"({meta['rows'] / max(seconds['total'], 1e-9):,.0f} rows/s; {first_phase} {seconds[first_phase]:.1f} s, "
          f"ids {seconds['ids']:.1f} s)")
    for s in meta["sources"]:
        print(f"  {s['path']}: {s['rows']:,} rows" + (f", {s['bad_rows']:,} bad rows skipped" if s["bad_rows"] else ""))
        for example in s["bad_examples"]:
            print(f"    skipped {example}")
    bad = sum(s["bad_rows"] for s in meta["sources"])
    if bad:
        print(f"  {bad:,} bad rows skipped in all")
    print("  splits: " + ", ".join(f"{k} rows [{lo:,}, {hi:,})" for k, (lo, hi) in meta["splits"].items()))


def cmd_data_prepare(args) -> int:
    from disttrain.prepare.schema import from_flags, load_schema
    from disttrain.prepare.tabular import PrepareOptions, prepare

    if args.items:
        raise DisttrainError(f"data prepare: unexpected arguments {' '.join(args.items)}; expected FILES... --out DIR")
    flags = args.label_column or args.dense_columns or args.sparse_columns or args.multi_hot_columns
    if args.schema and flags:
        raise DisttrainError("data prepare: --schema and the column flags both given; expected one of them")
    schema = load_schema(args.schema) if args.schema else from_flags(
        label=args.label_column, dense=args.dense_columns, sparse=args.sparse_columns,
        multi_hot=args.multi_hot_columns, transform=args.dense_transform, hash_rows=args.hash_rows,
        min_count=args.vocab_threshold, delimiter=args.list_delimiter, max_length=args.max_length,
        id_order=args.id_order, raw_ids=args.raw_ids) if flags else None
    opts = PrepareOptions(out=Path(args.out), split=args.split, header=args.header, delimiter=args.delimiter,
                          column_names=args.column_names, vocab_from=args.vocab_from, skip_bad_rows=args.skip_bad_rows,
                          workers=args.workers, force=args.force, progress=not args.quiet)
    meta = prepare(args.inputs, schema, opts)
    _print_written(args.out, meta, "read")
    for t in meta["tables"]:
        extra = [f"{t['mode']}"]
        if t["multi_hot"]:
            extra.append(f"multi-hot, mean {t['mean_length']} ids, {t['pooling']}")
        if t.get("out_of_vocabulary"):
            extra.append(f"{t['out_of_vocabulary']:,} values out of the vocabulary")
        if t.get("truncated_rows"):
            extra.append(f"{t['truncated_rows']:,} rows cut to {t['max_length']} ids ({t['truncated_values']:,} "
                         "ids dropped)")
        print(f"  table {t['name']}: {t['rows']:,} rows ({'; '.join(extra)})")
    print(f"train on it: disttrain launch data.source=prepared data.path={args.out} ...")
    return 0


def cmd_data_dien_synthetic(args) -> int:
    from disttrain.prepare.dien_synthetic import write_synthetic

    if args.items:
        raise DisttrainError(f"data dien-synthetic: unexpected arguments {' '.join(args.items)}; expected --out DIR")
    data = write_synthetic(args.out, samples=args.samples, users=args.users, items=args.num_items, cats=args.cats,
                           max_history=args.max_history, seed=args.seed, force=args.force)
    print(f"wrote {args.out}: {len(data.train):,} train / {len(data.test):,} test samples, tables "
          f"uid={args.users:,} mid={args.num_items:,} cat={args.cats:,}, mean history "
          f"{data.train.history_lengths.mean():.1f}")
    print(f"train on it: disttrain launch model.name=dien data.source=dien data.path={args.out} ...")
    return 0


def cmd_data_verify(args) -> int:
    from disttrain.data.criteo import open_dataset

    info = open_dataset(args.dir, verify="checksum")
    print(f"{args.dir}: ok ({info.rows:,} rows, {len(info.table_rows)} tables, {len(info.meta['files'])} files "
          f"match their sha256; fingerprint {info.fingerprint})")
    return 0


def positive(text: str, flag: str = "--nproc-per-node") -> int:
    if not text.isdigit() or int(text) <= 0:
        raise DisttrainError(f"{flag}: got {text!r}, expected a positive integer" + (" or auto" if flag == "--nproc-per-node" else ""))
    return int(text)
