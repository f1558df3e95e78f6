"""The `disttrain` argument parser, built from `VERBS`: a table of small records (name, help, arguments,
handler). Each verb's handler is in `disttrain.cli.commands`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

from disttrain.api import AFFINITIES, __version__
from disttrain.cli import commands as c

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



@dataclass(frozen=True)
class Arg:
    """One `add_argument` call: its flags (or positional name) and options."""

    flags: tuple[str, ...]
    options: dict = field(default_factory=dict)


def arg(*flags: str, **options) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Verb:
    """One verb: `name` is "plan", or "data criteo" for a verb of a group (`GROUPS`)."""

    name: str
    help: str
    handler: Callable[[argparse.Namespace], int]
    arguments: tuple[Arg, ...] = ()
    description: str | None = None


GROUPS = {"config": ("the ready configs, a resolved config, every key", "config_command"),
          "data": ("prepare datasets", "data_command")}

CONFIG_ITEMS = arg("items", nargs="*", metavar="[CONFIG] key=value")
RUN_ITEMS = arg("items", nargs="*", metavar="[CONFIG] key=value", help="config file and/or overrides")
NO_ITEMS = arg("items", nargs="*", help=argparse.SUPPRESS)  # caught by the verb with its own message
JSON = arg("--json", action="store_true")
CHECKPOINT = "a checkpoint (or a checkpoint directory: its newest)"


def _out(text: str) -> Arg:
    return arg("--out", required=True, help=text)


def _common_data(skip_help: str, force_help: str) -> tuple[Arg, ...]:
    """The trailing flags `data criteo` and `data prepare` share."""
    return (arg("--skip-bad-rows", action="store_true", help=skip_help),
            arg("--workers", type=int, default=0, help="processes (default: every core)"),
            arg("--force", action="store_true", help=force_help),
            arg("--quiet", action="store_true", help="no progress lines"), NO_ITEMS)


VERBS: tuple[Verb, ...] = (
    Verb("train", "train in this process (world of one, or a torchrun worker)", c.cmd_train, (RUN_ITEMS,)),
    Verb("launch", "start workers with launch.launcher", c.cmd_launch, (RUN_ITEMS,)),
    Verb("bench", "kaggle DLRM throughput benchmark", c.cmd_bench, (RUN_ITEMS,)),
    Verb("plan", "print the sharding plan without starting processes", c.cmd_plan, (
        CONFIG_ITEMS,
        arg("--world-size", type=int, default=0, help="ranks to plan for (default: launch settings)"),
        JSON,
        arg("--simulate", default="", metavar="N1,N2,...",
            help="plan and predict the step for each world size (weak scaling, nodes of cluster.ranks_per_node)"),
        arg("--batch-per-rank", type=int, default=0,
            help="with --simulate: samples per rank (default: train.batch_size over the launch's ranks)"),
        arg("--out", default="", help="with --simulate: write simulate.json here (`disttrain report` draws it)"))),
    Verb("probe", "measure the planner's machine rates with the job's own workers", c.cmd_probe, (
        CONFIG_ITEMS, arg("--out", default="", help="also write probe.json here (it always goes to run.output_dir)"),
        JSON)),
    Verb("export", "write a checkpoint as one unsharded model file for inference", c.cmd_export, (
        arg("checkpoint", help="a checkpoint (step_N directory) or a checkpoint.dir (its newest)"),
        _out("the model file to write"),
        arg("items", nargs="*", metavar="key=value",
            help="overrides (model.name=package.module:SPEC to run a model of one's own the checkpoint names)"))),
    Verb("config list", "the ready configs shipped with disttrain (run one: disttrain launch NAME)",
         c.cmd_config_list, (JSON, NO_ITEMS)),
    Verb("config show", "the resolved config: defaults, CONFIG, overrides, checked", c.cmd_config_show,
         (CONFIG_ITEMS, JSON)),
    Verb("config keys", "every key with its default and meaning", c.cmd_config_keys, (
        arg("--json", action="store_true", help="[{key, default, meaning}, ...]"),
        arg("--markdown", action="store_true", help="the table rows of docs/configuration.md"), NO_ITEMS)),
    Verb("infer", "run a checkpoint in throughput, latency or accuracy mode", c.cmd_infer, (
        arg("--checkpoint", required=True, help=CHECKPOINT),
        arg("--mode", required=True, choices=["throughput", "latency", "accuracy"]),
        arg("--precision", default="fp32", choices=["fp32", "bf16", "int8"],
            help="int8: a `disttrain quantize` output directory as --checkpoint"),
        arg("--runtime", default="torch", choices=["torch", "onnxruntime"],
            help="onnxruntime: an `export-onnx` file as --checkpoint (or a checkpoint: exported first)"),
        arg("--batch-size", type=int, default=0, help="default: the training batch (latency: 1)"),
        arg("--iterations", type=int, default=0, help="timed batches/requests (default 20 / 200)"),
        arg("--exact-max-length", type=int, default=0, help="DIEN: pad every history to exactly N"),
        arg("--nproc", type=lambda text: c.positive(text, "--nproc"), default=1,
            help="serve sharded over N local worker processes (the training plan for N ranks; default 1)"),
        arg("--json", action="store_true", help="print the result as JSON"),
        arg("items", nargs="*", help="[CONFIG] [key=value ...] (default: the checkpoint's own config)"))),
    Verb("export-onnx", "write a model as ONNX (checked with onnxruntime; not DIEN)", c.cmd_export_onnx, (
        arg("checkpoint", nargs="?", default="", help=CHECKPOINT),
        arg("--checkpoint", dest="checkpoint_opt", default="", help="the same, as an option"),
        _out("the .onnx file to write"),
        arg("--verify-batch", type=int, default=1024, help="test rows compared with PyTorch (default 1024)"),
        JSON, arg("items", nargs="*", metavar="key=value", help="data overrides (data.path=...)"))),
    Verb("quantize", "int8 post-training quantization with a layer-wise AUC guard", c.cmd_quantize, (
        arg("--checkpoint", required=True, help=CHECKPOINT),
        _out("directory to write: model_int8.pt and quant_report.json"),
        arg("--max-relative-auc-loss", type=float, default=None, help="default: quant.max_relative_auc_loss (0.01)"),
        arg("--json", action="store_true", help="print the report as JSON"),
        arg("items", nargs="*", metavar="key=value", help="overrides (data.path=..., quant.*)"))),
    Verb("report", "PNG plots and one HTML page of one or more runs (overlaid)", c.cmd_report, (
        arg("runs", nargs="+", metavar="RUN_DIR",
            help="run directories (run.output_dir): local paths or URLs (s3://bucket/runs/r1)"),
        arg("--out", default="", help="local directory for report.html and the PNGs (default: RUN_DIR/report; "
                                      "for a run on object storage ./report-<run name>)"), NO_ITEMS)),
    Verb("import", "turn a reference dlrm_s_pytorch.py --save-model file into a checkpoint", c.cmd_import, (
        arg("reference", help="the reference DLRM checkpoint file"),
        _out("checkpoint directory to write (a step_00000000 inside)"),
        arg("items", nargs="*", metavar="key=value", help="config overrides (model.flavor=kaggle, ...)"))),
    Verb("topology", "print the machine and the per-rank pinning plan", c.cmd_topology, (
        CONFIG_ITEMS,
        arg("--lscpu", default=None, help="canned `lscpu -p=CPU,CORE,SOCKET,NODE` output to plan for"),
        arg("--nproc-per-node", default="", help="local ranks (default: the config's; auto allowed)"),
        arg("--affinity", default="", choices=["", *AFFINITIES]), JSON)),
    Verb("data criteo", "raw Criteo logs (Kaggle train.txt, Terabyte day_N, .gz, CSV) -> DIR", c.cmd_data_criteo, (
        arg("raw", nargs="+", help="raw files in order (Kaggle: train.txt; Terabyte: day_0 ... day_23)"),
        _out("directory to write (appears only once complete)"),
        arg("--vocab-threshold", type=int, default=1,
            help="ids for values seen at least this often in the train split; others share id 0 (default 1)"),
        arg("--hash-rows", "--max-ind-range", dest="hash_rows", type=int, default=0,
            help="instead of a vocabulary: hash modulo N and number the results densely (the reference)"),
        arg("--id-order", default="frequency", choices=["frequency", "first-seen"],
            help="frequency: most frequent first, 0 = rare (default); first-seen: every value over all rows "
                 "in order of first appearance, the reference's ids exactly"),
        arg("--vocab-dicts", default="", metavar="DIR",
            help="the reference's dictionaries ({train,day}_fea_dict_J.npz) as vocabularies: its ids exactly "
                 "(values they lack -> id 0, counted)"),
        arg("--split", default="auto",
            help="kaggle (7 days, last -> test/val halves), days (last file -> test/val), files "
                 "(train[, val], test files), none, ratio:A,B,C; auto: kaggle for one file, days for more"),
        arg("--delimiter", default="auto", help="tab, comma or auto (default)"),
        arg("--header", default="auto", choices=["auto", "yes", "no"], help="first line is a header"),
        arg("--label-column", default="", help="column of the label (name with a header, or index)"),
        arg("--dense-columns", default="", help="integer feature columns, e.g. I1,I2 or 1-13"),
        arg("--sparse-columns", default="", help="categorical columns, e.g. C1,C2 or 14-39"),
        *_common_data("skip, count and report malformed rows", "replace an existing processed directory")),
        description="Parse raw Criteo rows on every core, map categoricals to contiguous ids, "
                    "transform dense features with log(1+x), write memory-mappable columns."),
    Verb("data prepare", "Parquet or CSV/TSV of any schema -> DIR (string, int, multi-hot features)",
         c.cmd_data_prepare, (
             arg("inputs", nargs="+", help="input files in order (.parquet, .csv/.tsv/.txt, plain or .gz/.bz2/.zst)"),
             _out("directory to write (appears only once complete)"),
             arg("--schema", default="", help="a schema YAML (label, dense, categorical, id_order; see docs/data.md)"),
             arg("--label-column", default="", help="without --schema: the label column"),
             arg("--dense-columns", default="", help="without --schema: dense columns, comma-separated"),
             arg("--sparse-columns", default="", help="without --schema: categorical columns, comma-separated"),
             arg("--multi-hot-columns", default="", help="without --schema: list (multi-hot) columns"),
             arg("--dense-transform", default="none", help="without --schema: none, log1p, standardize or minmax"),
             arg("--hash-rows", type=int, default=0, help="without --schema: hash ids modulo N instead of vocabularies"),
             arg("--raw-ids", action="store_true", help="without --schema: every categorical's id is its value's "
                                                        "64-bit hash, no vocabulary, no modulo (dynamic tables)"),
             arg("--vocab-threshold", type=int, default=1, help="without --schema: min_count of the vocabularies"),
             arg("--list-delimiter", default="|", help="without --schema: separator inside multi-hot text fields"),
             arg("--max-length", type=int, default=0, help="without --schema: values kept per multi-hot row (0: all)"),
             arg("--id-order", default="frequency", help="vocabulary ids: frequency (default) or first-seen"),
             arg("--vocab-from", default="", help="a prepared directory whose vocabularies and statistics to reuse "
                                                  "(a new day of the same data; unseen values -> id 0, counted)"),
             arg("--split", default="auto",
                 help="auto (one file: ratio:90,5,5; more: the last file -> test/val halves), days, files, none, "
                      "ratio:A,B,C"),
             arg("--header", default="auto", choices=["auto", "yes", "no"], help="CSV: first line is a header"),
             arg("--delimiter", default="auto", help="CSV: tab, comma, auto or one character"),
             arg("--column-names", default="", help="CSV without a header: every column's name, comma-separated "
                                                    "(default: 0, 1, 2, ...)"),
             *_common_data("skip, count and report rows that do not read",
                          "replace an existing prepared directory")),
         description="Read Parquet row groups or CSV byte ranges on every core, map categorical values "
                     "(int or string, single or multi-hot) to ids by a training-split vocabulary or a "
                     "stable 64-bit hash, transform dense features, write memory-mappable columns."),
    Verb("data dien-synthetic", "DIEN samples with a planted sequential signal, in the benchmark's files",
         c.cmd_data_dien_synthetic, (
             _out("directory to write (appears only once complete)"),
             arg("--samples", type=int, default=100000, help="training samples (the test split is a tenth)"),
             arg("--users", type=int, default=543060, help="uid vocabulary size (Amazon Books: 543,060)"),
             arg("--items", dest="num_items", type=int, default=367983,
                 help="mid vocabulary size (Amazon Books: 367,983)"),
             arg("--cats", type=int, default=1601, help="cat vocabulary size (Amazon Books: 1,601)"),
             arg("--max-history", type=int, default=100, help="longest history generated"),
             arg("--seed", type=int, default=0),
             arg("--force", action="store_true", help="replace an existing directory"), NO_ITEMS),
         description="Write local_train_splitByUser, local_test_splitByUser, the three vocabulary "
                     "pickles, item-info and reviews-info, as DIEN_TF2 reads them."),
    Verb("data verify", "check a processed directory's files against its meta.json (sha256)", c.cmd_data_verify,
         (arg("dir"), NO_ITEMS)),
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb in `VERBS` (a group's parser made at its first verb, so the order is the table's)."""
    parser = argparse.ArgumentParser(prog="disttrain", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"disttrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for verb in VERBS:
        group, _, name = verb.name.rpartition(" ")
        if group and group not in groups:
            text, dest = GROUPS[group]
            groups[group] = sub.add_parser(group, help=text).add_subparsers(dest=dest, required=True)
        p = (groups[group] if group else sub).add_parser(name, help=verb.help, description=verb.description)
        for argument in verb.arguments:
            p.add_argument(*argument.flags, **argument.options)
        p.set_defaults(func=verb.handler)
    return parser
