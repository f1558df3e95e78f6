"""One typed config tree: YAML file + dotted command-line overrides -> frozen-ish dataclasses.

Every key has a default, so a file may hold only some sections and a run may use no file at all.
Unknown keys and values of the wrong type are rejected with the key's full path.

Example::

    cfg = load_config("cluster_configs/demo.yaml", ["train.batch_size=4096", "model.table_sizes=[7,1001,13]"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from disttrain.config_tree import merge, nest, parse_override, yaml_load
from disttrain.errors import ConfigError

# Keys whose values are names in a registry are checked there, not here (one home per fact): model.name and
# model.flavor (disttrain.models.MODELS), data.source (the model's spec and disttrain.data.sources.SOURCES),
# train.optimizer (disttrain.optim.OPTIMIZERS), launch.launcher (disttrain.launchers.LAUNCHERS).
STRATEGIES = ("auto", "table_wise", "row_wise", "column_wise", "data_parallel")
BACKENDS = ("auto", "gloo", "nccl", "ccl")
DISTRIBUTIONS = ("uniform", "zipf")
INTERACTIONS = ("dot", "cat")
POOLINGS = ("sum", "mean")
AFFINITIES = ("none", "core", "numa", "socket", "explicit")


@dataclass
class ModelConfig:
    name: str = "dlrm"
    flavor: str = "debug"
    # Override the flavor's tables: their number and rows. Empty = the flavor's tables.
    table_sizes: list[int] = field(default_factory=list)
    # Cap every table at this many rows (like the reference's --max-ind-range). 0 = no cap.
    max_rows: int = 0
    # 0 = the flavor's embedding dim.
    embedding_dim: int = 0
    interaction: str = "dot"
    pooling: str = "sum"
    # fp32 | bf16: how embedding rows are stored, looked up and exchanged. bf16 halves table memory and the
    # all-to-all bytes; updates are computed in fp32 (optimizer state stays fp32) and rounded stochastically
    # into the bf16 rows; row-wise partial sums are added in fp32. Checkpoints hold fp32 either way.
    embedding_dtype: str = "fp32"


@dataclass
class DataConfig:
    source: str = "synthetic"
    distribution: str = "zipf"
    zipf_exponent: float = 1.05
    # Ids per bag: 1 = one-hot. With multi_hot_max > 1 each bag holds 1..multi_hot_max ids.
    multi_hot_max: int = 1
    num_dense: int = 13
    # Global batches of held-out data per evaluation. -1 = the source's default (synthetic: 8; criteo: the
    # whole validation or test split); 0 = no evaluation.
    eval_batches: int = -1
    # data.source=criteo: the directory written by `disttrain data criteo`; data.source=dien: the directory
    # holding the DIEN benchmark's files (local_train_splitByUser, local_test_splitByUser, uid_voc.pkl,
    # mid_voc.pkl, cat_voc.pkl, reviews-info, item-info).
    path: str = ""
    # DIEN: behaviours kept per sample (the last ones). 0 = the flavor's (100 for ai_matrix).
    max_history: int = 0
    # DIEN: false feeds every sample with its history removed (the no-history baseline).
    use_history: bool = True
    # DIEN with data.source=synthetic: generated training samples (the test split is a tenth of it).
    synthetic_samples: int = 100000
    # criteo: shuffle the training rows by train.seed each epoch, within windows of this many rows.
    shuffle: bool = True
    shuffle_window: int = 262144
    # criteo: check the files against meta.json before training: checksum (sha256, once, by the launcher or
    # rank 0) or size.
    verify: str = "checksum"
    # 0 = a fresh batch every step; N = generate N training batches once and cycle them (as the peer
    # benchmark drivers do), which takes data generation out of a throughput measurement.
    cycle_batches: int = 0


@dataclass
class TrainConfig:
    batch_size: int = 256
    steps: int = 100
    seed: int = 0
    lr: float = 0.1
    optimizer: str = "sgd"
    eval_every: int = 0
    log_every: int = 10
    # Steps excluded from the samples/s figure (start-up, allocator warm-up). -1 = automatic.
    warmup_steps: int = -1
    # "" = start fresh; auto = the newest complete checkpoint in checkpoint.dir (fresh if none);
    # a path = that checkpoint (or the newest in that checkpoint directory). Any world size, any plan.
    resume: str = ""
    # > 0: train this many passes over the training split (data.source=criteo), instead of train.steps.
    epochs: float = 0.0
    # > 0: MLPerf-style stop as soon as an evaluation of the validation split reaches this AUC.
    target_auc: float = 0.0
    # fp32 | bf16: bf16 runs the dense layers (MLPs, interactions, attention) under autocast with fp32 master
    # weights, fp32 embeddings, fp32 loss and optimizer state.
    precision: str = "fp32"
    # A step whose loss is nan or inf on any rank: stop (the run ends with one line; no update is applied, so the
    # last checkpoint stays the last good one) or skip (no update anywhere; counted as skipped_steps).
    nonfinite_loss: str = "stop"
    # > 0: record this many steps after the warm-up with torch.profiler; each rank writes
    # <run.output_dir>/trace_rank<R>.json (Chrome trace format: open in ui.perfetto.dev or chrome://tracing).
    profile_steps: int = 0


@dataclass
class ShardingConfig:
    strategy: str = "auto"
    # Per-table strategy overrides: {table_name: strategy}.
    tables: dict[str, str] = field(default_factory=dict)
    # Column shards per column-wise table. 0 = one per rank.
    num_column_shards: int = 0


@dataclass
class LaunchConfig:
    launcher: str = "local"
    # Ranks on this node, or "auto": one per socket (per NUMA node with affinity numa, per GPU with nccl).
    nproc_per_node: int | str = 2
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    # 0 = pick a free port (single node only).
    master_port: int = 0
    # torchrun c10d rendezvous endpoint host:port; empty = static master address.
    rdzv_endpoint: str = ""
    # none | core | numa | socket | explicit (see disttrain.runtime.affinity.AffinityMode)
    affinity: str = "core"
    # Hyper-thread siblings are used only when this is true (physical cores first otherwise).
    use_logical_cores: bool = False
    # With affinity explicit: one CPU list per local rank, e.g. ["0-3", "4-7"].
    cpu_lists: list[int | str] = field(default_factory=list)
    # More ranks than physical cores is an error unless this is true (then ranks share cores).
    allow_oversubscribe: bool = False
    # Intra-op threads per worker. 0 = as many as the cores it is pinned to.
    threads_per_worker: int = 0
    # auto | gloo | nccl | ccl (see disttrain.runtime.backend). auto = gloo for CPU training.
    backend: str = "auto"
    # Seconds a rendezvous, a Ray cluster or a collective may take before the run fails.
    timeout_s: int = 600
    # torchrun c10d: whether this node hosts the rendezvous store. auto = node_rank 0 hosts it.
    rdzv_is_host: bool | str = "auto"
    # torchrun --local-addr: this node's address as the others reach it (multi-homed hosts, namespaces).
    local_addr: str = ""
    # Network interface gloo/nccl use between nodes (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME). Empty = default.
    socket_ifname: str = ""
    # After SIGTERM or SIGINT (preemption, Ctrl-C): the seconds the workers get to finish the step and write a
    # final checkpoint (exit code 75) before they are killed. Kubernetes and Slurm wait 30 s by default.
    stop_grace_s: int = 25
    # Restart all workers this many times after a failure, resuming from the run's last complete checkpoint
    # (local, torchrun --max-restarts, Ray FailureConfig.max_failures).
    max_restarts: int = 0
    # Ray: workers in the job (0 = nproc_per_node x nnodes) and logical CPUs each asks of Ray.
    num_workers: int = 0
    cpus_per_worker: int = 1
    # Ray cluster address (host:port of the GCS, or ray://...). Empty = $RAY_ADDRESS, else a local Ray.
    ray_address: str = ""
    # Ray Train storage for reported checkpoints (shared storage on multi-node clusters). Empty = ~/ray_results.
    ray_storage: str = ""
    # Horovod: horovodrun -H host:slots[,host:slots]. Empty = localhost:nproc_per_node.
    hosts: str = ""
    # auto | off | jemalloc | tcmalloc | /path/to/lib.so (preloaded into workers by the launcher)
    allocator: str = "auto"


@dataclass
class CheckpointConfig:
    # Where checkpoints go (shared storage when ranks span machines). Empty = no checkpoints.
    dir: str = ""
    # Save every N steps (0 = only at the end); the last step is always saved when dir is set.
    every_steps: int = 0
    # Complete checkpoints kept (0 = all).
    keep_last: int = 2


@dataclass
class QuantConfig:
    # `disttrain quantize`: layers return to fp32 until the int8 model's AUC is within this relative loss of
    # the fp32 model's (0.01 = 1%, the DLRM INT8 recipe's tolerance).
    max_relative_auc_loss: float = 0.01
    # Held-out batches whose activations set the int8 input ranges.
    calibration_batches: int = 8


@dataclass
class RunConfig:
    output_dir: str = "runs/latest"
    progress: bool = True
    # TensorBoard event files from rank 0 in output_dir: loss, AUC, samples/s, learning rate, per-rank step time.
    tensorboard: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.interaction": INTERACTIONS,
    "model.pooling": POOLINGS,
    "model.embedding_dtype": ("fp32", "bf16"),
    "data.verify": ("checksum", "size"),
    "data.distribution": DISTRIBUTIONS,
    "train.precision": ("fp32", "bf16"),
    "train.nonfinite_loss": ("stop", "skip"),
    "sharding.strategy": STRATEGIES,
    "launch.affinity": AFFINITIES,
    "launch.backend": BACKENDS,
}
POSITIVE = ("train.batch_size", "quant.calibration_batches", "launch.nnodes", "data.multi_hot_max", "data.num_dense", "launch.cpus_per_worker",
            "launch.timeout_s", "data.synthetic_samples", "launch.stop_grace_s")
NON_NEGATIVE = (
    "train.steps", "train.eval_every", "model.max_rows", "model.embedding_dim", "sharding.num_column_shards",
    "data.cycle_batches", "data.max_history", "train.profile_steps", "launch.node_rank", "launch.master_port", "launch.threads_per_worker",
    "launch.num_workers", "launch.max_restarts", "checkpoint.every_steps", "checkpoint.keep_last",
)


def validate(cfg: Config) -> Config:
    """Types are checked while merging; these are the checks of values that need no registry, no model and no
    world size."""
    flat = to_flat_dict(cfg)
    for path, choices in CHOICES.items():
        if flat[path] not in choices:
            raise ConfigError(f"{path}: got {flat[path]!r}, expected one of {', '.join(choices)}")
    for path in POSITIVE:
        if flat[path] <= 0:
            raise ConfigError(f"{path}: got {flat[path]!r}, expected a positive integer")
    for path in NON_NEGATIVE:
        if flat[path] < 0:
            raise ConfigError(f"{path}: got {flat[path]!r}, expected an integer >= 0")
    nproc = cfg.launch.nproc_per_node
    if nproc != "auto" and (isinstance(nproc, str) or nproc <= 0):
        raise ConfigError(f"launch.nproc_per_node: got {nproc!r}, expected a positive integer or auto")
    if cfg.launch.rdzv_is_host not in (True, False, "auto"):
        raise ConfigError(f"launch.rdzv_is_host: got {cfg.launch.rdzv_is_host!r}, expected true, false or auto")
    if cfg.launch.affinity == "explicit" and not cfg.launch.cpu_lists:
        raise ConfigError("launch.cpu_lists: empty with launch.affinity=explicit; expected one CPU list per local rank")
    if cfg.data.eval_batches < -1:
        raise ConfigError(f"data.eval_batches: got {cfg.data.eval_batches}, expected -1 (source default), 0 or more")
    if cfg.train.epochs < 0:
        raise ConfigError(f"train.epochs: got {cfg.train.epochs}, expected a number >= 0")
    if not 0 <= cfg.train.target_auc < 1:
        raise ConfigError(f"train.target_auc: got {cfg.train.target_auc}, expected an AUC in [0, 1); 0 = no target")
    if cfg.data.shuffle_window <= 0:
        raise ConfigError(f"data.shuffle_window: got {cfg.data.shuffle_window}, expected a positive number of rows")
    if not 0 <= cfg.quant.max_relative_auc_loss < 1:
        raise ConfigError(f"quant.max_relative_auc_loss: got {cfg.quant.max_relative_auc_loss}, expected a fraction "
                          "in [0, 1) (0.01 = 1%)")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: got {cfg.train.lr!r}, expected a positive number")
    for name, strategy in cfg.sharding.tables.items():
        if strategy not in STRATEGIES[1:]:
            raise ConfigError(
                f"sharding.tables.{name}: got {strategy!r}, expected one of {', '.join(STRATEGIES[1:])}"
            )
    for i, rows in enumerate(cfg.model.table_sizes):
        if rows <= 0:
            raise ConfigError(f"model.table_sizes[{i}]: got {rows}, expected a positive number of rows")
    return cfg


def _build(data: Any, overrides: list[str] | None, *, source: str) -> Config:
    """Parsed YAML sections (from `source`) plus dotted overrides -> a validated Config."""
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {type(data).__name__}")
    merge(cfg, data, "")
    for text in overrides or []:
        parts, value = parse_override(text)
        merge(cfg, nest(parts, value), "")
    return validate(cfg)


def config_from_yaml(text: str, overrides: list[str] | None = None, *, source: str = "config") -> Config:
    """A config saved by disttrain (a checkpoint's, an export's), with overrides on top."""
    return _build(yaml_load(text) or {}, overrides, source=source)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return _build(data, overrides, source=str(path))


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in to_dict(cfg).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
