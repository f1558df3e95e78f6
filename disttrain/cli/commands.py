"""What each `disttrain` verb does: read the arguments, call the Python API (`disttrain.api`), print the result.
Nothing here computes: when a verb needs something the API lacks, the API grows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from disttrain import api
from disttrain.errors import DisttrainError

BENCH_CONFIG = "bench_kaggle"  # a ready config (cluster_configs/bench_kaggle.yaml, shipped in the package)


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The first argument without '=' is the config file; the rest are overrides."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _load(items: list[str], base: str | None = None) -> api.Config:
    path, overrides = _split_args(items)
    if path is not None and base is not None:
        raise DisttrainError(f"{path}: unexpected argument, expected key=value overrides")
    return api.load_config(path or base, overrides)


def _no_items(args, verb: str, expected: str = "") -> None:
    if args.items:
        raise DisttrainError(f"{verb}: unexpected arguments {' '.join(args.items)}" + (f"; expected {expected}"
                                                                                        if expected else ""))


def _print_json_or(args, result, text: str | None = None, *, kind: str = "") -> None:
    print(json.dumps(result, indent=2) if args.json else (text if text is not None else api.describe(result, kind=kind)))


def cmd_train(args) -> int:
    try:
        api.train(_load(args.items), reexec=True)
    except api.Preempted as stop:
        if api.this_rank() == "0":
            print(f"disttrain: {stop}", file=sys.stderr, flush=True)
        return api.PREEMPTED
    return 0


def cmd_export(args) -> int:
    plain = [item for item in args.items if "=" not in item]
    if plain:
        raise DisttrainError(f"export: unexpected arguments {' '.join(plain)}; expected CHECKPOINT --out FILE "
                             "[key=value ...]")
    out = api.export(args.checkpoint, args.out, overrides=args.items)
    print(f"exported {args.checkpoint} -> {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_infer(args) -> int:
    config, overrides = _split_args(args.items)
    result = api.infer(args.checkpoint, mode=args.mode, precision=args.precision, runtime=args.runtime,
                       nproc=args.nproc, batch_size=args.batch_size, iterations=args.iterations,
                       exact_max_length=args.exact_max_length, config=config, overrides=overrides)
    _print_json_or(args, result, kind="infer")
    return 0


def cmd_export_onnx(args) -> int:
    checkpoint = args.checkpoint_opt or args.checkpoint
    if not checkpoint:
        raise DisttrainError("export-onnx: no checkpoint; expected CHECKPOINT (or --checkpoint PATH) --out FILE.onnx")
    result = api.export_onnx(checkpoint, args.out, overrides=args.items, verify_batch=args.verify_batch)
    _print_json_or(args, result, f"exported {checkpoint} -> {result['onnx']} ({result['bytes'] / 2**20:.1f} MiB, "
                                 f"opset {result['opset']}); onnxruntime matches PyTorch on {result['verified_rows']} "
                                 f"test rows: max |logit diff| {result['max_abs_logit_diff']:.2g}")
    return 0


def cmd_quantize(args) -> int:
    report = api.quantize(args.checkpoint, args.out, overrides=args.items,
                          max_relative_auc_loss=args.max_relative_auc_loss)
    _print_json_or(args, report, kind="quantize")
    return 0


def cmd_report(args) -> int:
    result = api.report([*args.runs, *args.items], out=args.out or None)
    for label, missing in result["missing"].items():
        for item in missing:
            print(f"report: {label}: {item}", file=sys.stderr)
    print(f"wrote {result['html']} ({len(result['plots'])} plots: "
          f"{', '.join(Path(p).name for p in result['plots']) or 'none'})")
    return 0


def cmd_import(args) -> int:
    path = api.import_reference(args.reference, args.out, overrides=args.items)
    print(f"imported {args.reference} -> {path}; train or evaluate it sharded with "
          f"`disttrain launch train.resume={path} ...` (train.steps=0: evaluate only)")
    return 0


def cmd_launch(args) -> int:
    try:
        api.launch(_load(args.items))
    except api.JobFailed as failed:
        return failed.code
    return 0


def cmd_plan(args) -> int:
    if args.simulate:
        result = api.simulate(_load(args.items), args.simulate, batch_per_rank=args.batch_per_rank,
                              out=args.out or None)
        _print_json_or(args, result, kind="simulate")
        return 0
    report = api.plan(_load(args.items), args.world_size or None)
    _print_json_or(args, report.to_json(), report.describe())
    return 0


def cmd_probe(args) -> int:
    """Launch the job's workers to measure the cost model's rates; probe.json in run.output_dir (and --out)."""
    measured = api.probe(_load(args.items), out=args.out or None)
    if measured is None:  # another node ran rank 0 and wrote it
        return 0
    result, target = measured
    _print_json_or(args, result, api.describe(result, kind="probe")
                   + f"\nwritten to {target}; plan with it: cluster.probe={target}")
    return 0


def cmd_config_list(args) -> int:
    """The ready configs."""
    _no_items(args, "config list")
    ready = api.ready_configs()
    width = max(map(len, ready))
    _print_json_or(args, ready, "\n".join(f"{name:<{width}}  {text}" for name, text in ready.items())
                   + "\nrun one: disttrain launch NAME [key=value ...]; see it: disttrain config show NAME")
    return 0


def cmd_config_show(args) -> int:
    """A config resolved (defaults, CONFIG, overrides) and checked."""
    cfg = _load(args.items)
    print(json.dumps(api.config_to_dict(cfg), indent=2) if args.json else api.config_to_yaml(cfg), end="")
    return 0


def cmd_config_keys(args) -> int:
    """Every key, its default and meaning (the schema), and the names the registries know."""
    _no_items(args, "config keys")
    keys = api.config_keys()
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    if args.markdown:
        print("\n".join(api.config_markdown_rows()))
        return 0
    width = max(len(k["key"]) for k in keys)
    for k in keys:
        print(f"{k['key']:<{width}}  {json.dumps(k['default'])}\n{'':<{width}}  {k['meaning']}")
    print("\nnames the registries know (model.name also takes package.module:attribute, as does data.source):")
    for key, names in api.registries().items():
        print(f"  {key}: {', '.join(names)}")
    return 0


def cmd_bench(args) -> int:
    try:
        result = api.bench(_load(args.items, BENCH_CONFIG))
    except api.JobFailed as failed:
        return failed.code
    if result is None:
        return 0
    summary, limit = result["summary"], result["roofline"]
    print(f"roofline: {limit['flops_per_sample'] / 1e6:.2f} MFLOP per sample (forward + backward matmuls); "
          f"{limit['gemm_dtype']} GEMM {limit['gemm_gflops']:.0f} GFLOP/s on {result['threads']} thread(s) -> "
          f"at most {limit['limit_samples_per_s']:,.0f} samples/s; this run reached {limit['share']:.0%}")
    phases = summary.get("breakdown", {}).get("phases", {})
    for name, bound in limit.get("phase_bounds", {}).items():
        if name in phases:
            print(f"  {name}: {phases[name]['median']:.2f} ms per step against {bound['ms']:.2f} ms to move its "
                  f"{bound['bytes'] / 1e6:.1f} MB at {limit['memory_gbps_per_rank']:.0f} GB/s "
                  f"({limit['ids_per_rank_step']:,.0f} ids per rank per step)")
    print(f"BENCH {summary['model']}/{summary['flavor']} world_size={summary['world_size']} "
          f"global_batch={summary['global_batch_size']} samples_per_s={summary['samples_per_s']:.0f} "
          f"roofline_share={limit['share']:.3f}")
    return 0


def cmd_topology(args) -> int:
    """The machine and each local rank's placement, without starting anything."""
    nproc = args.nproc_per_node
    report = api.topology(_load(args.items), lscpu=args.lscpu, affinity=args.affinity,
                          nproc_per_node=(nproc if nproc == "auto" else positive(nproc)) if nproc else None)
    _print_json_or(args, report.to_json(), report.describe())
    return 0


def cmd_data_criteo(args) -> int:
    _no_items(args, "data criteo", "RAW... --out DIR")
    meta = api.prepare_criteo(
        args.raw, args.out, vocab_threshold=args.vocab_threshold, hash_rows=args.hash_rows, split=args.split,
        delimiter=args.delimiter, header=args.header, label_column=args.label_column,
        dense_columns=args.dense_columns, sparse_columns=args.sparse_columns, skip_bad_rows=args.skip_bad_rows,
        workers=args.workers, force=args.force, progress=not args.quiet, id_order=args.id_order,
        vocab_dicts=args.vocab_dicts)
    _print_written(args.out, meta, "parse")
    options = meta["options"]
    mode = options["mode"]
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
    _no_items(args, "data prepare", "FILES... --out DIR")
    meta = api.prepare(
        args.inputs, args.out, schema=args.schema, label_column=args.label_column, dense_columns=args.dense_columns,
        sparse_columns=args.sparse_columns, multi_hot_columns=args.multi_hot_columns,
        dense_transform=args.dense_transform, hash_rows=args.hash_rows, raw_ids=args.raw_ids,
        vocab_threshold=args.vocab_threshold, list_delimiter=args.list_delimiter, max_length=args.max_length,
        id_order=args.id_order, split=args.split, header=args.header, delimiter=args.delimiter,
        column_names=args.column_names, vocab_from=args.vocab_from, skip_bad_rows=args.skip_bad_rows,
        workers=args.workers, force=args.force, progress=not args.quiet)
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
    _no_items(args, "data dien-synthetic", "--out DIR")
    data = api.dien_synthetic(args.out, samples=args.samples, users=args.users, items=args.num_items, cats=args.cats,
                              max_history=args.max_history, seed=args.seed, force=args.force)
    print(f"wrote {args.out}: {data['train_samples']:,} train / {data['test_samples']:,} test samples, tables "
          f"uid={args.users:,} mid={args.num_items:,} cat={args.cats:,}, mean history {data['mean_history']:.1f}")
    print(f"train on it: disttrain launch model.name=dien data.source=dien data.path={args.out} ...")
    return 0


def cmd_data_verify(args) -> int:
    info = api.verify_data(args.dir)
    print(f"{args.dir}: ok ({info.rows:,} rows, {len(info.table_rows)} tables, {len(info.meta['files'])} files "
          f"match their sha256; fingerprint {info.fingerprint})")
    return 0


def positive(text: str, flag: str = "--nproc-per-node") -> int:
    """A flag's positive integer (--nproc-per-node also takes auto, checked by its caller)."""
    if not text.isdigit() or int(text) <= 0:
        raise DisttrainError(f"{flag}: got {text!r}, expected a positive integer" + (" or auto" if flag == "--nproc-per-node" else ""))
    return int(text)
