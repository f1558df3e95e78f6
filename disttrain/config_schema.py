"""The config schema: every key, its type, its default and what it means, in one place.

`disttrain config keys` prints it (the configuration table of docs/configuration.md is generated from it, and a test checks that
they agree); `disttrain.config` loads and checks values against it. Keys whose values are names in a registry
(model.name, model.flavor, data.source, train.optimizer, launch.launcher) are checked against the registry.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Values of keys that need no registry (the registries' names are listed by `disttrain config keys`).
STRATEGIES = ("auto", "table_wise", "row_wise", "table_row_wise", "column_wise", "data_parallel")
BACKENDS = ("auto", "gloo", "nccl", "ccl")
DISTRIBUTIONS = ("uniform", "zipf")
INTERACTIONS = ("dot", "cat")
POOLINGS = ("sum", "mean")
AFFINITIES = ("none", "core", "numa", "socket", "explicit")


def key(default: Any = dataclasses.MISSING, *, factory=None, help: str) -> Any:  # noqa: A002 - the field's help
    """A config key: its default (or a factory for a list/mapping) and one sentence or two on what it does."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


class FrozenConfigError(AttributeError):
    """A checked config was changed in place (a programming error, not a user's): change a copy instead."""


_MARKS = ("_frozen", "_section")  # what freezing adds; a copy drops them


class _Freezable:
    """A section (or the whole config) that `Config.freeze` makes read-only: assigning a different value then
    raises; assigning the value a key already holds is allowed, so resolving steps stay idempotent. A deep copy is
    thawed: the way to change a checked config is to change a copy. The registry check's result (`_checked`, kept
    with the values it was made for, `disttrain.planning.build.check_config`) goes with the copy as it is."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen") and (name not in self.__dict__ or self.__dict__[name] != value):
            where = f"{self.__dict__.get('_section')}.{name}" if self.__dict__.get("_section") else name
            raise FrozenConfigError(f"config key {where}: the config is checked and frozen (it holds "
                                    f"{self.__dict__.get(name)!r}, not {value!r}); change a copy (copy.deepcopy)")
        object.__setattr__(self, name, value)

    def __deepcopy__(self, memo: dict) -> Any:
        new = object.__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            if name == "_checked":
                object.__setattr__(new, name, value)
            elif name not in _MARKS:
                object.__setattr__(new, name, copy.deepcopy(value, memo))
        return new

    def __getstate__(self) -> dict:  # pickled (Ray): the values and whether frozen, not the checked spec
        return {k: v for k, v in self.__dict__.items() if k != "_checked"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass
class ModelConfig(_Freezable):
    name: str = key("dlrm", help="the model: `dlrm`, `dlrm_dcnv2`, `wide_deep`, `deepfm`, `dien` (see Models), an "
                                 "installed package's `disttrain.models` entry point, or `package.module:attribute` "
                                 "naming a ModelSpec (see Bring your own model); nothing else changes")
    flavor: str = key("debug", help="the model's size preset; every model has `debug` (tiny, for tests). `dlrm`: "
                                    "`kaggle` (dim 16, bottom 13-512-256-64-16, top 512-256-1, the 26 Criteo-Kaggle "
                                    "cardinalities), `mlperf` (the earlier, dot-interaction MLPerf DLRM: dim 128, "
                                    "bottom 13-512-256-128, top 1024-1024-512-256-1, Terabyte cardinalities). "
                                    "`dlrm_dcnv2`: `mlperf` (today's MLPerf DLRM: the same MLPs and tables, a DCN-v2 "
                                    "cross network of 3 layers, rank 512). `wide_deep`: `intel`. `deepfm`: "
                                    "`deeprec`. `dien`: `ai_matrix`")
    table_sizes: list[int] = key(factory=list, help="override the flavor's tables: their number and rows "
                                                    "(empty: the flavor's, or the data's)")
    table_names: list[str] = key(factory=list, help="the tables' names, in feature order (empty: the data's column "
                                                    "names with `data.source=prepared` or `criteo`, else `t0`, `t1`, "
                                                    "...); `t<i>` always stays an alias of table i")
    table_pooling: dict[str, str] = key(factory=dict, help="per-table pooling `{name: sum|mean}` (a prepared "
                                                           "dataset's multi-hot features bring their schema's); the "
                                                           "others use `model.pooling`")
    max_rows: int = key(0, help="cap every table at this many rows (like the reference's `--max-ind-range`); "
                                "0 = no cap")
    embedding_dim: int = key(0, help="override the flavor's embedding dim (0: the flavor's)")
    interaction: str = key("dot", help="`dlrm`: `dot` (pairwise dot products) or `cat`")
    pooling: str = key("sum", help="bag pooling: `sum` or `mean`")
    embedding_dtype: str = key("fp32", help="`bf16`: rows stored, looked up and exchanged in bf16 (half the "
                                            "table memory and all-to-all bytes); updates in fp32 with fp32 "
                                            "optimizer state, rounded stochastically into the rows; row-wise "
                                            "partial sums added in fp32; checkpoints hold fp32")
    dynamic_tables: list[str] = key(factory=list, help="dynamic tables (names, `t<i>`, or `[all]`): raw 64-bit ids, "
                                                       "no vocabulary; a row is created on an id's first sighting "
                                                       "(after `model.dynamic_min_count`) on the rank owning the id's "
                                                       "bucket; the table's declared rows are its expected size "
                                                       "(init scale, plan)")
    dynamic_min_count: int = key(1, help="dynamic tables: sightings before an id gets its own row (until then it "
                                         "reads the default row, zeros)")
    dynamic_ttl_steps: int = key(0, help="dynamic tables: drop a row (and its optimizer state) not seen for this "
                                         "many steps (0 = never)")
    dynamic_capacity: int = key(0, help="dynamic tables: rows per table per rank; past it the least frequently "
                                        "used row goes (0 = unbounded)")


@dataclass
class DataConfig(_Freezable):
    source: str = key("synthetic", help="the data: `synthetic` (built-in click logs with a planted model; for "
                                        "DIEN, generated behaviour sequences), `criteo` (a directory from "
                                        "`disttrain data criteo`), `dien` (the DIEN benchmark's files), an "
                                        "installed `disttrain.data_sources` entry point, or "
                                        "package.module:attribute naming a SourceSpec")
    distribution: str = key("zipf", help="synthetic ids: `uniform` or `zipf` (exponent `data.zipf_exponent`)")
    zipf_exponent: float = key(1.05, help="synthetic ids: the Zipf exponent")
    multi_hot_max: int = key(1, help="synthetic ids per bag: 1 = one-hot; N > 1 gives bags of 1..N ids")
    num_dense: int = key(13, help="dense features (`criteo`: taken from the data)")
    eval_batches: int = key(-1, help="global batches per evaluation; -1 = the source's default (synthetic 8, "
                                     "criteo and dien the whole split); 0 = none")
    path: str = key("", help="`criteo`: the processed directory; `dien`: the directory of the benchmark's files")
    max_history: int = key(0, help="DIEN: behaviours kept per sample, the last ones (0 = the flavor's: 100 for "
                                   "`ai_matrix`)")
    use_history: bool = key(True, help="DIEN: `false` removes every history (the no-history baseline)")
    synthetic_samples: int = key(100000, help="DIEN on `synthetic`: generated training samples (the test split is "
                                              "a tenth)")
    shuffle: bool = key(True, help="`criteo`: shuffle the training rows by `train.seed` each epoch (blocks of "
                                   "4096 rows permuted, then rows within windows)")
    shuffle_window: int = key(262144, help="`criteo`: rows per shuffle window")
    verify: str = key("checksum", help="`criteo`: check the files before training: `checksum` (sha256 of every "
                                       "file, once, by the launcher or rank 0) or `size`")
    raw_ids: bool = key(False, help="synthetic: the dynamic tables' ids drawn from the whole int64 space (a fixed "
                                    "bijection of the table ids, same planted signal)")
    cycle_batches: int = key(0, help="0 = fresh batches every step; N = generate N training batches once and "
                                     "cycle them (as peer benchmark drivers do)")


@dataclass
class TrainConfig(_Freezable):
    batch_size: int = key(256, help="the **global** batch (each rank takes batch / world size)")
    steps: int = key(100, help="training steps (global batches)")
    seed: int = key(0, help="seeds the model's initial weights (torch's, numpy's and Python's generators before the "
                            "model is built; every rank then takes rank 0's dense weights) and the data order")
    lr: float = key(0.1, help="learning rate of both optimizers (sparse rows and dense parameters)")
    optimizer: str = key("sgd", help="`sgd`, `adagrad`, `rowwise_adagrad`, `adam`, `adagraddecay` (DeepRec's: "
                                     "accumulators start at 0.1 and every 100,000 steps are multiplied by 0.9, "
                                     "floored at 0.1); embeddings get the sparse form, dense parameters torch's "
                                     "fused kernels")
    eval_every: int = key(0, help="evaluate every N steps (0 = only at the end; criteo: on the validation split)")
    log_every: int = key(10, help="one log line per N steps from rank 0")
    warmup_steps: int = key(-1, help="steps left out of samples/s (-1 = min(5, steps/5))")
    resume: str = key("", help="`auto` (the newest complete checkpoint in `checkpoint.dir`; fresh if none) or a "
                               "checkpoint path; any world size, any plan")
    resume_data: str = key("auto", help="what a resume does with the data: `continue` (go on where the checkpoint's "
                                        "run stopped in it; `train.steps` is the step the run ends at), `restart` "
                                        "(read this run's data from its first batch: the next day's data; the run "
                                        "trains `train.steps` (or `train.epochs`) more steps), `auto` (`restart` "
                                        "when the checkpoint was trained on other data than `data.path`, by the "
                                        "prepared data's fingerprint, else `continue`)")
    check_replicas_every: int = key(0, help="compare checksums of every rank's dense parameters every N steps "
                                            "(0 = only before each evaluation and checkpoint, as always): a rank "
                                            "whose replica differs from rank 0's stops the run in one line")
    epochs: float = key(0.0, help="`criteo`, `dien` (and DIEN on `synthetic`): passes over the training split "
                                  "(sets `train.steps`)")
    target_auc: float = key(0.0, help="MLPerf-style: stop at the first evaluation whose validation AUC reaches it "
                                      "(evaluates once per epoch unless `train.eval_every`)")
    precision: str = key("fp32", help="`bf16`: the dense layers (MLPs, interactions, attention) under bf16 "
                                      "autocast with fp32 master weights, fp32 embeddings, loss, statistics "
                                      "(BatchNorm, Dice) and optimizer state; DIEN's GRU loops stay fp32")
    nonfinite_loss: str = key("stop", help="a step whose loss is nan or inf on any rank: `stop` (one line naming "
                                           "the step and the ranks; no update is applied, so the last checkpoint "
                                           "stays the last good one) or `skip` (the step's update is dropped on "
                                           "every rank and counted in `summary.json` `skipped_steps`)")
    sparse_kernel: str = key("auto", help="fp32 tables' row updates: `compiled` (a C kernel built at first use, "
                                          "cached in ~/.cache/disttrain/kernels: `sgd` bitwise torch's result, "
                                          "`adagrad`/`adagraddecay` within 2 ulp per update), `torch` (torch's "
                                          "ops), `auto` (compiled where it is bitwise, `sgd`, and a C compiler "
                                          "is present)")
    profile_steps: int = key(0, help="record N steps after the warm-up with torch.profiler: each rank writes "
                                     "`<run.output_dir>/trace_rank<R>.json` (Chrome trace), like DeepRec's "
                                     "`--timeline`; those steps are left out of samples/s")

    def warmup(self) -> int:
        """The steps left out of samples/s (the trainer's and the benchmark's rule): `warmup_steps`, or
        min(5, steps / 5) when it is -1."""
        return self.warmup_steps if self.warmup_steps >= 0 else min(5, self.steps // 5)


@dataclass
class ShardingConfig(_Freezable):
    strategy: str = key("auto", help=", ".join(f"`{name}`" for name in STRATEGIES))  # every value, none forgotten
    tables: dict[str, str] = key(factory=dict, help="per-table overrides `{table_name: strategy}` (tables are "
                                                    "named `t0`, `t1`, ... in the Criteo models; DIEN's `uid`, "
                                                    "`mid`, `cat`; a model of one's own names its own)")
    num_column_shards: int = key(0, help="column shards per column-wise table (0 = one per rank)")
    memory_limit_mib: int = key(0, help="tables and optimizer state allowed per rank, MiB (0 = no limit); a plan "
                                        "that cannot keep under it is refused, naming the rank")
    balance: float = key(1.05, help="`auto`: no rank holds more than this times the mean memory per rank, where "
                                    "tables can be split")


@dataclass
class ClusterConfig(_Freezable):
    ranks_per_node: int = key(0, help="ranks per node (numbered node by node) for the planner's cost model; 0 = "
                                      "the world size / `launch.nnodes`")
    probe: str = key("", help="a `disttrain probe` result (`probe.json`): its measured rates stand in for the "
                              "keys below left at 0")
    gemm_gflops: float = key(0.0, help="one rank's dense matmul rate, GFLOP/s (0 = the probe's, else 100)")
    dense_efficiency: float = key(0.0, help="share of the GEMM rate the model's whole dense step reaches "
                                            "(activations, interaction, optimizer; 0 = the probe's, else 0.7)")
    memory_gbs: float = key(0.0, help="one rank's rate at reading and updating random embedding rows, GB/s (0 = "
                                      "the probe's, else 5)")
    intra_gbs: float = key(0.0, help="one rank's exchange rate with ranks of its node, GB/s (0 = the probe's, "
                                     "else 4)")
    intra_latency_us: float = key(0.0, help="one intra-node message round, microseconds (0 = the probe's, else 15)")
    inter_gbs: float = key(0.0, help="one node's network link, GB/s (0 = the probe's, else 1.25: 10 Gbit/s)")
    inter_latency_us: float = key(0.0, help="one message round between nodes, microseconds (0 = the probe's, else "
                                            "50)")


@dataclass
class LaunchConfig(_Freezable):
    launcher: str = key("local", help="`local` (spawns `nproc_per_node` workers), `torchrun`, `ray`, `horovod` "
                                      "(see Launchers)")
    nproc_per_node: int | str = key(2, help="ranks on this node, or `auto` (one per socket; per NUMA node with "
                                            "`affinity: numa`; per GPU with nccl)")
    nnodes: int = key(1, help="nodes in the job")
    node_rank: int = key(0, help="this node's number (0 .. nnodes-1)")
    master_addr: str = key("127.0.0.1", help="static rendezvous address (loopback keeps every port on "
                                             "127.0.0.1)")
    master_port: int = key(0, help="static rendezvous port (0 = a free port, single node only)")
    rdzv_endpoint: str = key("", help="torchrun c10d rendezvous `host:port` (multi-node); empty = static")
    affinity: str = key("core", help="`core`: each local rank pinned to its own block of cores; `numa`, "
                                     "`socket`: a NUMA node or socket per rank; `explicit` (`cpu_lists`); "
                                     "`none`")
    use_logical_cores: bool = key(False, help="also use hyper-thread siblings (physical cores first otherwise)")
    cpu_lists: list[int | str] = key(factory=list, help="with `affinity: explicit`: one CPU list per local rank, "
                                                        "e.g. `[\"0-3\", \"4-7\"]`")
    allow_oversubscribe: bool = key(False, help="allow more ranks than physical cores (they share cores)")
    threads_per_worker: int = key(0, help="intra-op threads (0 = the cores a rank is pinned to); a user's "
                                          "`OMP_NUM_THREADS` wins")
    backend: str = key("auto", help="`auto` (nccl with CUDA GPUs, else gloo), `gloo`, `nccl`, `ccl` (see "
                                    "Launchers)")
    timeout_s: int = key(600, help="collective timeout; how long a node waits for a rendezvous, a Ray cluster or "
                                   "Horovod's start")
    rdzv_is_host: bool | str = key("auto", help="whether this node hosts the c10d store (`true`/`false`; auto = "
                                                "torchrun decides)")
    local_addr: str = key("", help="this node's address as the others reach it (torchrun `--local-addr`)")
    socket_ifname: str = key("", help="the network interface between nodes (`GLOO_SOCKET_IFNAME`, "
                                      "`NCCL_SOCKET_IFNAME`)")
    stop_grace_s: int = key(25, help="after SIGTERM or Ctrl-C: seconds the workers get to finish the step and "
                                     "write a final checkpoint (exit code 75) before they are killed (Kubernetes "
                                     "and Slurm wait 30 s by default)")
    max_restarts: int = key(0, help="restart all workers after a failure, resuming from the run's newest "
                                    "checkpoint (local, torchrun `--max-restarts`, Ray `FailureConfig`)")
    num_workers: int = key(0, help="Ray: workers (0 = nproc_per_node x nnodes)")
    cpus_per_worker: int = key(1, help="Ray: CPUs each worker asks of Ray")
    ray_address: str = key("", help="Ray cluster (`host:6379` or `ray://host:10001`; empty = `$RAY_ADDRESS`, "
                                    "else a private local Ray)")
    ray_storage: str = key("", help="Ray Train storage for reported checkpoints (empty = `~/ray_results`; shared "
                                    "storage on multi-node clusters)")
    hosts: str = key("", help="Horovod `-H host:slots,...` (empty = `localhost:nproc_per_node`)")
    shared_memory: bool = key(True, help="with gloo and every rank on one host: all-reduce and all-to-all through "
                                         "shared memory (/dev/shm) instead of loopback TCP")
    allocator: str = key("auto", help="`auto` (jemalloc, else tcmalloc, else system), `off`, `jemalloc`, "
                                      "`tcmalloc`, or a `.so` path; the user's `LD_PRELOAD`/`MALLOC_CONF` win")


@dataclass
class CheckpointConfig(_Freezable):
    dir: str = key("", help="where sharded checkpoints go (shared storage when ranks span machines); empty = "
                            "none")
    every_steps: int = key(0, help="save every N steps (0 = only at the end; the last step is always saved)")
    keep_last: int = key(2, help="complete checkpoints kept (0 = all)")


@dataclass
class RunConfig(_Freezable):
    output_dir: str = key("runs/latest", help="where `config.yaml` and `summary.json` go")
    progress: bool = key(True, help="progress bar on interactive terminals")
    tensorboard: bool = key(True, help="TensorBoard event files from rank 0 in `run.output_dir` (Observability)")


@dataclass
class QuantConfig(_Freezable):
    max_relative_auc_loss: float = key(0.01, help="`disttrain quantize`: layers return to fp32 until the int8 "
                                                  "model's AUC is within this relative loss of fp32's")
    calibration_batches: int = key(8, help="held-out batches whose activations set the int8 input ranges")


@dataclass
class Config(_Freezable):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)

    def freeze(self) -> Config:
        """Read-only from now on (every section; lists and mappings inside are the caller's promise). Returns self."""
        for section in dataclasses.fields(self):
            part = getattr(self, section.name)
            object.__setattr__(part, "_section", section.name)
            object.__setattr__(part, "_frozen", True)
        object.__setattr__(self, "_frozen", True)
        return self

    @property
    def frozen(self) -> bool:
        return bool(self.__dict__.get("_frozen"))


@dataclass(frozen=True)
class Key:
    path: str  # section.name
    default: Any
    help: str


def keys() -> list[Key]:
    """Every key of the schema, in order, with its default and meaning."""
    out = []
    for section in dataclasses.fields(Config):
        for item in dataclasses.fields(section.default_factory):
            default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
            out.append(Key(f"{section.name}.{item.name}", default, item.metadata["help"]))
    return out


def _shown(value: Any) -> str:
    """A default as YAML writes it: true, "", [], 0.01."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    if isinstance(value, (list, dict)):
        return "[]" if isinstance(value, list) and not value else "{}" if not value else repr(value)
    return str(value)


def markdown_rows() -> list[str]:
    """The configuration table of docs/configuration.md (`disttrain config keys --markdown`; tests/test_config.py
    checks that the page holds exactly these rows)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{k.path}` | `{_shown(k.default)}` | {k.help} |" for k in keys()]
    return rows
