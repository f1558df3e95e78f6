"""The `disttrain` argument parser: every verb, its flags and their help. Each verb's function is in
`disttrain.cli.commands`."""

from __future__ import annotations

import argparse

from disttrain import __version__
from disttrain.cli import commands as c
from disttrain.config_schema import AFFINITIES

USAGE = """`disttrain` command line: train, launch, plan, bench, serve, prepare data.

    disttrain train [CONFIG] [key=value ...]      run in this process (or as a torchrun worker)
    disttrain launch [CONFIG] [key=value ...]     start workers with launch.launcher (local | torchrun | ray | horovod)
    disttrain plan [CONFIG] [key=value ...] --world-size N [--json]
    disttrain plan [CONFIG] [key=value ...] --simulate 1,8,64,1024 [--out DIR]   predicted weak scaling
    disttrain probe [CONFIG] [key=value ...] [--out FILE]   GEMM, lookup and link rates -> probe.json
    disttrain config list | show [CONFIG] [key=value ...] | keys [--json | --markdown]
    disttrain bench [key=value ...]               the kaggle DLRM throughput benchmark (2 pinned ranks)
    disttrain topology [--lscpu FILE] [--nproc-per-node N] [--affinity MODE] [--json]
    disttrain export CHECKPOINT --out FILE         one unsharded model file (inference)
    disttrain infer [CONFIG] --checkpoint PATH --mode throughput|latency|accuracy [--precision fp32|bf16|int8]
    disttrain quantize --checkpoint PATH --out DIR   int8 post-training quantization with an AUC guard
    disttrain export-onnx CHECKPOINT --out FILE.onnx   DLRM, DLRM-DCNv2, Wide&Deep, DeepFM as ONNX
    disttrain import REFERENCE.pt --out DIR [key=value ...]   a reference DLRM --save-model file -> checkpoint
    disttrain report RUN_DIR [RUN_DIR ...] [--out DIR]   PNG plots + one HTML page
    disttrain data criteo RAW... --out DIR [options]   raw Criteo TSV/CSV (.gz too) -> memory-mapped columns
    disttrain data prepare FILES... --out DIR [--schema S | --label-column ...]   any Parquet/CSV schema -> DIR
    disttrain data verify DIR                      check a processed directory against its meta.json
    disttrain data dien-synthetic --out DIR [--samples N]   DIEN files with a planted sequential signal

CONFIG is a YAML file or a ready config's name (`disttrain config list`: demo, ray, ...). model.name: dlrm (flavor
mlperf is the earlier, dot-interaction MLPerf DLRM), dlrm_dcnv2 (today's MLPerf DLRM: DCN-v2 cross network),
wide_deep, deepfm, dien, or a model of one's own: package.module:SPEC.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disttrain", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"disttrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("train", c.cmd_train, "train in this process (world of one, or a torchrun worker)"),
        ("launch", c.cmd_launch, "start workers with launch.launcher"),
        ("bench", c.cmd_bench, "kaggle DLRM throughput benchmark"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="config file and/or overrides")
        p.set_defaults(func=func)
    p = sub.add_parser("plan", help="print the sharding plan without starting processes")
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    p.add_argument("--world-size", type=int, default=0, help="ranks to plan for (default: launch settings)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--simulate", default="", metavar="N1,N2,...",
                   help="plan and predict the step for each world size (weak scaling, nodes of cluster.ranks_per_node)")
    p.add_argument("--batch-per-rank", type=int, default=0,
                   help="with --simulate: samples per rank (default: train.batch_size over the launch's ranks)")
    p.add_argument("--out", default="", help="with --simulate: write simulate.json here (`disttrain report` draws it)")
    p.set_defaults(func=c.cmd_plan)
    p = sub.add_parser("probe", help="measure the planner's machine rates with the job's own workers")
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    p.add_argument("--out", default="", help="also write probe.json here (it always goes to run.output_dir)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_probe)
    p = sub.add_parser("export", help="write a checkpoint as one unsharded model file for inference")
    p.add_argument("checkpoint", help="a checkpoint (step_N directory) or a checkpoint.dir (its newest)")
    p.add_argument("--out", required=True, help="the model file to write")
    p.add_argument("items", nargs="*", metavar="key=value",
                   help="overrides (model.name=package.module:SPEC to run a model of one's own the checkpoint names)")
    p.set_defaults(func=c.cmd_export)
    config = sub.add_parser("config", help="the ready configs, a resolved config, every key").add_subparsers(
        dest="config_command", required=True)
    p = config.add_parser("list", help="the ready configs shipped with disttrain (run one: disttrain launch NAME)")
    p.add_argument("--json", action="store_true")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=c.cmd_config)
    p = config.add_parser("show", help="the resolved config: defaults, CONFIG, overrides, checked")
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_config)
    p = config.add_parser("keys", help="every key with its default and meaning")
    p.add_argument("--json", action="store_true", help="[{key, default, meaning}, ...]")
    p.add_argument("--markdown", action="store_true", help="the table rows of docs/configuration.md")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=c.cmd_config)
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
    p.add_argument("--nproc", type=lambda text: c.positive(text, "--nproc"), default=1,
                   help="serve sharded over N local worker processes (the training plan for N ranks; default 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("items", nargs="*", help="[CONFIG] [key=value ...] (default: the checkpoint's own config)")
    p.set_defaults(func=c.cmd_infer)
    p = sub.add_parser("export-onnx", help="write a model as ONNX (checked with onnxruntime; not DIEN)")
    p.add_argument("checkpoint", nargs="?", default="", help="a checkpoint (or a checkpoint directory: its newest)")
    p.add_argument("--checkpoint", dest="checkpoint_opt", default="", help="the same, as an option")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--verify-batch", type=int, default=1024, help="test rows compared with PyTorch (default 1024)")
    p.add_argument("--json", action="store_true")
    p.add_argument("items", nargs="*", metavar="key=value", help="data overrides (data.path=...)")
    p.set_defaults(func=c.cmd_export_onnx)
    p = sub.add_parser("quantize", help="int8 post-training quantization with a layer-wise AUC guard")
    p.add_argument("--checkpoint", required=True, help="a checkpoint (or a checkpoint directory: its newest)")
    p.add_argument("--out", required=True, help="directory to write: model_int8.pt and quant_report.json")
    p.add_argument("--max-relative-auc-loss", type=float, default=None,
                   help="default: quant.max_relative_auc_loss (0.01)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("items", nargs="*", metavar="key=value", help="overrides (data.path=..., quant.*)")
    p.set_defaults(func=c.cmd_quantize)
    p = sub.add_parser("report", help="PNG plots and one HTML page of one or more runs (overlaid)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories (run.output_dir): local paths or URLs (s3://bucket/runs/r1)")
    p.add_argument("--out", default="", help="local directory for report.html and the PNGs (default: RUN_DIR/report; "
                                             "for a run on object storage ./report-<run name>)")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=c.cmd_report)
    p = sub.add_parser("import", help="turn a reference dlrm_s_pytorch.py --save-model file into a checkpoint")
    p.add_argument("reference", help="the reference DLRM checkpoint file")
    p.add_argument("--out", required=True, help="checkpoint directory to write (a step_00000000 inside)")
    p.add_argument("items", nargs="*", metavar="key=value", help="config overrides (model.flavor=kaggle, ...)")
    p.set_defaults(func=c.cmd_import)
    p = sub.add_parser("topology", help="print the machine and the per-rank pinning plan")
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value")
    p.add_argument("--lscpu", default=None, help="canned `lscpu -p=CPU,CORE,SOCKET,NODE` output to plan for")
    p.add_argument("--nproc-per-node", default="", help="local ranks (default: the config's; auto allowed)")
    p.add_argument("--affinity", default="", choices=["", *AFFINITIES])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=c.cmd_topology)
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
    p.add_argument("--id-order", default="frequency", choices=["frequency", "first-seen"],
                   help="frequency: most frequent first, 0 = rare (default); first-seen: every value over all rows "
                        "in order of first appearance, the reference's ids exactly")
    p.add_argument("--vocab-dicts", default="", metavar="DIR",
                   help="the reference's dictionaries ({train,day}_fea_dict_J.npz) as vocabularies: its ids exactly "
                        "(values they lack -> id 0, counted)")
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
    p.set_defaults(func=c.cmd_data_criteo)
    p = data.add_parser("prepare", help="Parquet or CSV/TSV of any schema -> DIR (string, int, multi-hot features)",
                        description="Read Parquet row groups or CSV byte ranges on every core, map categorical values "
                                    "(int or string, single or multi-hot) to ids by a training-split vocabulary or a "
                                    "stable 64-bit hash, transform dense features, write memory-mappable columns.")
    p.add_argument("inputs", nargs="+", help="input files in order (.parquet, .csv/.tsv/.txt, plain or .gz/.bz2/.zst)")
    p.add_argument("--out", required=True, help="directory to write (appears only once complete)")
    p.add_argument("--schema", default="", help="a schema YAML (label, dense, categorical, id_order; see docs/data.md)")
    p.add_argument("--label-column", default="", help="without --schema: the label column")
    p.add_argument("--dense-columns", default="", help="without --schema: dense columns, comma-separated")
    p.add_argument("--sparse-columns", default="", help="without --schema: categorical columns, comma-separated")
    p.add_argument("--multi-hot-columns", default="", help="without --schema: list (multi-hot) columns")
    p.add_argument("--dense-transform", default="none", help="without --schema: none, log1p, standardize or minmax")
    p.add_argument("--hash-rows", type=int, default=0, help="without --schema: hash ids modulo N instead of vocabularies")
    p.add_argument("--raw-ids", action="store_true", help="without --schema: every categorical's id is its value's "
                                                          "64-bit hash, no vocabulary, no modulo (dynamic tables)")
    p.add_argument("--vocab-threshold", type=int, default=1, help="without --schema: min_count of the vocabularies")
    p.add_argument("--list-delimiter", default="|", help="without --schema: separator inside multi-hot text fields")
    p.add_argument("--max-length", type=int, default=0, help="without --schema: values kept per multi-hot row (0: all)")
    p.add_argument("--id-order", default="frequency", help="vocabulary ids: frequency (default) or first-seen")
    p.add_argument("--vocab-from", default="", help="a prepared directory whose vocabularies and statistics to reuse "
                                                    "(a new day of the same data; unseen values -> id 0, counted)")
    p.add_argument("--split", default="auto",
                   help="auto (one file: ratio:90,5,5; more: the last file -> test/val halves), days, files, none, "
                        "ratio:A,B,C")
    p.add_argument("--header", default="auto", choices=["auto", "yes", "no"], help="CSV: first line is a header")
    p.add_argument("--delimiter", default="auto", help="CSV: tab, comma, auto or one character")
    p.add_argument("--column-names", default="", help="CSV without a header: every column's name, comma-separated "
                                                      "(default: 0, 1, 2, ...)")
    p.add_argument("--skip-bad-rows", action="store_true", help="skip, count and report rows that do not read")
    p.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
    p.add_argument("--force", action="store_true", help="replace an existing prepared directory")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=c.cmd_data_prepare)
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
    p.set_defaults(func=c.cmd_data_dien_synthetic)
    p = data.add_parser("verify", help="check a processed directory's files against its meta.json (sha256)")
    p.add_argument("dir")
    p.add_argument("items", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=c.cmd_data_verify)
    return parser


