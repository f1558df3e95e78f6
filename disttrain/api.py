"""disttrain's Python API: what the command line does, for scripts. The CLI is a thin layer over these functions.

    import disttrain.api as dt

    cfg = dt.load_config("demo", ["train.steps=50", "run.output_dir=runs/a"])   # a file, a ready config, or None
    print(dt.plan(cfg, world_size=8).describe())                               # the sharding plan, no processes
    summary = dt.launch(cfg)                                                     # the workers' summary.json
    dt.export("runs/ck", "model.pt")
    model, cfg = dt.load_exported("model.pt")                                    # a plain nn.Module, eval mode
    result = dt.infer("runs/ck", mode="accuracy")                                # AUC, log loss, accuracy

Every function raises `disttrain.errors.DisttrainError` (one sentence naming the key or file, the value and what
was expected) on bad input; `launch` raises `JobFailed` when the workers fail. A model or data source of one's
own is named in the config (`model.name=package.module:SPEC`); `overrides` of the serving functions name it again
when a checkpoint's config names it (a file disttrain reads never makes it import code).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from disttrain import __version__
from disttrain.config import Config, ready_configs
from disttrain.config_schema import AFFINITIES
from disttrain.errors import DisttrainError

if TYPE_CHECKING:  # importing the API stays cheap: `data prepare` never loads torch
    from disttrain.sharding.plan import ShardingPlan


class JobFailed(DisttrainError):
    """The workers of a launched job did not finish: `code` is the job's exit code (75: stopped on request after
    a final checkpoint)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PlanReport:
    """A sharding plan and whether each rank's share fits this machine's memory."""

    plan: ShardingPlan
    fits: bool
    verdict: str

    def to_json(self) -> dict:
        return {**self.plan.to_json(), "memory": {"fits": self.fits, "verdict": self.verdict}}

    def describe(self) -> str:
        return self.plan.describe() + f"\n{self.verdict} (the limit is this machine's)"


def load_config(config: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """A config file (or a ready config's name: `demo`, ...; or None: every default) with dotted overrides
    (`train.batch_size=4096`), checked: types, values, and the names in the model, data source, optimizer and
    launcher registries (a model named by import path is imported here)."""
    from disttrain.launch import load_checked

    return load_checked(str(config) if config is not None else None, list(overrides))


def plan(cfg: Config, world_size: int | None = None) -> PlanReport:
    """The sharding plan for `world_size` ranks (default: the launch settings) and its memory verdict, without
    starting anything."""
    from disttrain.launch import launch_world
    from disttrain.planning.build import build_plan
    from disttrain.planning.resources import memory_verdict, rank_limit, rank_needs
    from disttrain.runtime.bootstrap import resolve_nproc
    from disttrain.runtime.topology import detect_topology

    cfg = copy.deepcopy(cfg)  # yours stays as given
    cfg.launch.nproc_per_node = resolve_nproc(cfg, detect_topology())
    world = world_size or launch_world(cfg)[0]
    model, sharding = build_plan(cfg, world)
    fits, verdict = memory_verdict(rank_needs(cfg, model, sharding),
                                   *rank_limit(min(int(cfg.launch.nproc_per_node), world)))
    return PlanReport(sharding, fits, verdict)


def launch(cfg: Config) -> dict | None:
    """Start the workers with `launch.launcher`, wait for them, and return the job's summary.json (None on a
    machine that did not run rank 0: another node of a multi-node job). Raises JobFailed when they fail."""
    from disttrain.launch import launch as start
    from disttrain.launch import resolve_job

    code = start(*resolve_job(cfg))  # the workers' config: a resolved, frozen copy of cfg
    if code != 0:
        raise JobFailed(f"the job's workers exited with code {code}", code)
    from disttrain.engine.outputs import drop_staging, published_summary

    summary = published_summary(cfg)
    drop_staging(cfg)  # a run.output_dir on object storage: all of it is in the bucket now
    return summary


def train(cfg: Config, *, reexec: bool = False) -> dict | None:
    """Train in this process (a world of one, or a torchrun worker): the summary on rank 0. The process pins its
    threads; with `reexec` it is re-executed once so that the allocator and OpenMP variables take effect (the
    command line does that; a notebook should not). Raises `disttrain.runtime.signals.Preempted` after a final
    checkpoint when stopped by SIGTERM or SIGINT."""
    from disttrain.worker import run_worker

    return run_worker(cfg, reexec=reexec)


def export(checkpoint: str | Path, out: str | Path, overrides: Sequence[str] = ()) -> Path:
    """One unsharded model file (state_dict + config) of a sharded checkpoint, whatever world wrote it."""
    from disttrain.serving.export import export_model

    return export_model(checkpoint, out, list(overrides))


def load_exported(path: str | Path, overrides: Sequence[str] = ()):
    """(the plain model in eval mode, its config) of an exported file; nothing is unpickled."""
    from disttrain.serving.export import load_exported as load

    return load(path, list(overrides))


def infer(checkpoint: str | Path, *, mode: str = "accuracy", precision: str = "fp32", runtime: str = "torch",
          nproc: int = 1, batch_size: int = 0, iterations: int = 0, exact_max_length: int = 0,
          config: str | None = None, overrides: Sequence[str] = ()) -> dict:
    """A checkpoint (an int8 directory with precision int8, an .onnx file with runtime onnxruntime) in one of the
    modes throughput, latency or accuracy; `nproc` > 1 serves it sharded over local worker processes."""
    if nproc > 1:
        if runtime != "torch":
            raise DisttrainError(f"--runtime {runtime} with --nproc {nproc}: sharded inference runs on torch; "
                                 "expected --nproc 1 with onnxruntime")
        from disttrain.launch import launch_as
        from disttrain.serving.sharded_infer import run_sharded_inference

        return run_sharded_inference(str(checkpoint), launch_as, nproc=nproc, mode=mode, config=config,
                                     precision=precision, batch_size=batch_size, iterations=iterations,
                                     exact_max_length=exact_max_length, overrides=list(overrides))
    from disttrain.serving.infer import run_inference

    return run_inference(str(checkpoint), mode=mode, config=config, precision=precision, runtime=runtime,
                         batch_size=batch_size, iterations=iterations, exact_max_length=exact_max_length,
                         overrides=list(overrides))


def quantize(checkpoint: str | Path, out: str | Path, *, overrides: Sequence[str] = (),
             max_relative_auc_loss: float | None = None) -> dict:
    """int8 post-training quantization guarded by AUC; writes `out/model_int8.pt` and returns the report."""
    from disttrain.serving.quantize import quantize as run

    return run(str(checkpoint), out, overrides=list(overrides), max_relative_auc_loss=max_relative_auc_loss)


def registries() -> dict[str, list[str]]:
    """The names each registry key accepts here: built in, and installed packages' entry points."""
    from disttrain.launchers import LAUNCHERS
    from disttrain.models import MODELS
    from disttrain.optim import OPTIMIZERS
    from disttrain.plugins import MODEL_GROUP, SOURCE_GROUP, plugin_names

    return {"model.name": [*MODELS, *plugin_names(MODEL_GROUP)],
            "model.flavor": [f"{name}: {' '.join(spec.flavors)}" for name, spec in MODELS.items()],
            "data.source": [*sorted({s for spec in MODELS.values() for s in spec.data_sources}),
                            *plugin_names(SOURCE_GROUP)],
            "train.optimizer": list(OPTIMIZERS), "launch.launcher": list(LAUNCHERS)}


def config_to_dict(cfg: Config) -> dict:
    """A resolved config as plain data (`disttrain config show --json`)."""
    from disttrain.config import to_dict

    return to_dict(cfg)


def config_to_yaml(cfg: Config) -> str:
    """A resolved config as YAML (what `disttrain config show` prints)."""
    from disttrain.config import to_yaml

    return to_yaml(cfg)


def config_keys() -> list[dict]:
    """Every config key: [{key, default, meaning}, ...] (the schema)."""
    from disttrain.config_schema import keys

    return [{"key": k.path, "default": k.default, "meaning": k.help} for k in keys()]


def config_markdown_rows() -> list[str]:
    """The table rows of docs/configuration.md."""
    from disttrain.config_schema import markdown_rows

    return markdown_rows()


def simulate(cfg: Config, worlds: str | Sequence[int], *, batch_per_rank: int = 0,
             out: str | Path | None = None) -> dict:
    """Plan and predict the step for each world size (`"1,8,64"` or a list; weak scaling); with `out`, also
    write out/simulate.json (`report` draws it)."""
    from disttrain.launch import launch_world
    from disttrain.planning.simulate import parse_worlds
    from disttrain.planning.simulate import simulate as run

    sizes = parse_worlds(worlds) if isinstance(worlds, str) else list(worlds)
    result = run(cfg, sizes, batch_per_rank=batch_per_rank, base_world=launch_world(cfg)[0])
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "simulate.json").write_text(json.dumps(result, indent=2))
    return result


def probe(cfg: Config, *, out: str | Path | None = None) -> tuple[dict, Path] | None:
    """Launch the job's workers to measure the cost model's rates: (probe.json as a dict, where it is: run.output_dir,
    or `out` when given, a copy). None on a machine that did not run rank 0."""
    from disttrain.engine.outputs import run_dir
    from disttrain.launch import launch_as

    code = launch_as(cfg, "probe")
    if code != 0:
        raise DisttrainError(f"the probe's workers failed (exit code {code}); their errors are above")
    written = run_dir(cfg) / "probe.json"
    if not written.is_file():  # another node ran rank 0 and wrote it
        return None
    target = Path(out) if out else written
    if out:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(written.read_text())
    return json.loads(written.read_text()), target


def bench(cfg: Config) -> dict | None:
    """The benchmark: GEMM measured on the idle machine, then the job: {"summary", "roofline", "threads"} (None on a
    machine that did not run rank 0). Raises JobFailed when the workers fail."""
    from disttrain.planning.roofline import gemm_gflops, roofline, run_dtype

    train_cfg, warmup = cfg.train, cfg.train.warmup()
    if train_cfg.steps - warmup - train_cfg.profile_steps <= 0:
        raise DisttrainError(f"train.steps: got {train_cfg.steps} with train.warmup_steps={warmup}"
                             + (f" and train.profile_steps={train_cfg.profile_steps}" if train_cfg.profile_steps else "")
                             + "; expected more steps than that: the benchmark times the steps after them")
    cores = len(os.sched_getaffinity(0))  # GEMM measured on an idle machine, before the workers start:
    before = gemm_gflops(run_dtype(cfg), cores, seconds=0.5)
    if (summary := launch(cfg)) is None:  # the launch resolves a copy; the roofline reads cfg as given
        return None
    threads = sum(w.get("threads", 1) for w in summary.get("workers") or [{}])
    limit = roofline(cfg, summary["samples_per_s"], threads, measured_before=before if threads == cores else 0.0)
    return {"summary": summary, "roofline": limit, "threads": threads}


@dataclass(frozen=True)
class TopologyReport:
    """The machine (`disttrain.runtime.topology`) and each local rank's placement, nothing started."""

    topology: object
    affinity: str
    nproc: int
    placements: list

    def to_json(self) -> dict:
        t = self.topology
        machine = {"sockets": t.sockets, "numa_nodes": t.nodes, "physical_cores": len(t.physical_cores()),
                   "logical_cpus": len(t.cpus),
                   "gpus": [{"index": g.index, "numa_node": g.numa_node, "pci_bus": g.pci_bus} for g in t.gpus]}
        return {"machine": machine, "affinity": self.affinity, "ranks": [p.to_json() for p in self.placements]}

    def describe(self) -> str:
        from disttrain.runtime.topology import format_cpus

        lines = [self.topology.describe(), f"{self.nproc} local rank(s), affinity {self.affinity}:"]
        for p in self.placements:
            cpus = format_cpus(p.cpus) if p.cpus is not None else "any"
            env = " ".join(f"{k}={v}" for k, v in p.env.items())
            gpu = f" GPU {p.gpu}" if p.gpu is not None else ""
            lines.append(f"  local rank {p.local_rank}: CPUs {cpus} (NUMA {','.join(map(str, p.numa_nodes))}){gpu}, "
                         f"{p.threads} thread(s){' [shared cores]' if p.shared else ''}  {env}")
        return "\n".join(lines)


def topology(cfg: Config, *, lscpu: str | Path | None = None, affinity: str = "",
             nproc_per_node: int | str | None = None) -> TopologyReport:
    """This machine (or canned `lscpu -p=CPU,CORE,SOCKET,NODE` output) and the pinning plan of its local ranks;
    `affinity` and `nproc_per_node` (a count or "auto") replace the config's."""
    from disttrain.config import validate
    from disttrain.runtime.bootstrap import placements_for, resolve_nproc, user_set_variables
    from disttrain.runtime.topology import detect_topology

    cfg = copy.deepcopy(cfg)
    if affinity:
        cfg.launch.affinity = affinity
    if nproc_per_node:
        cfg.launch.nproc_per_node = nproc_per_node
    validate(cfg)
    machine = detect_topology(lscpu)
    nproc = resolve_nproc(cfg, machine)
    placements = placements_for(cfg, machine, nproc=nproc, user_env=user_set_variables())
    return TopologyReport(machine, cfg.launch.affinity, nproc, placements)


def export_onnx(checkpoint: str | Path, out: str | Path, *, overrides: Sequence[str] = (),
                verify_batch: int = 1024) -> dict:
    """Write the model as ONNX, only once onnxruntime matches PyTorch on `verify_batch` test rows; what was checked."""
    from disttrain.serving.onnx_export import export_onnx as run

    return run(checkpoint, out, overrides=list(overrides), verify_batch=verify_batch)


def import_reference(reference: str | Path, out: str | Path, *, overrides: Sequence[str] = ()) -> Path:
    """A reference dlrm_s_pytorch.py --save-model file as a disttrain checkpoint (step 0) in `out`."""
    from disttrain.serving.reference_import import import_reference as run

    return run(reference, out, list(overrides))


def report(runs: Sequence[str | Path], *, out: str | Path | None = None) -> dict:
    """PNG plots and report.html of one or more run directories: {"html", "plots", "missing": {run: [...]}}."""
    from disttrain.report import render

    return render(list(runs), out or None)


def prepare_criteo(raw: Sequence[str], out: str | Path, **options) -> dict:
    """Raw Criteo logs -> memory-mapped columns in `out`; `options` are the fields of
    `disttrain.prepare.criteo_inputs.PrepOptions` (vocab_threshold, hash_rows, split, ...). Returns meta.json."""
    from disttrain.prepare.criteo import prepare as run
    from disttrain.prepare.criteo_inputs import PrepOptions

    return run(list(raw), PrepOptions(out=Path(out), **options))


def prepare(inputs: Sequence[str], out: str | Path, *, schema: str | Path = "", label_column: str = "",
            dense_columns: str = "", sparse_columns: str = "", multi_hot_columns: str = "",
            dense_transform: str = "none", hash_rows: int = 0, raw_ids: bool = False, vocab_threshold: int = 1,
            list_delimiter: str = "|", max_length: int = 0, id_order: str = "frequency", **options) -> dict:
    """Parquet or CSV of any schema -> `out`: a schema file, or the column flags (every column alike), or neither
    (inferred); `options` are the fields of `disttrain.prepare.tabular.PrepareOptions`. Returns meta.json."""
    from disttrain.prepare.schema import from_flags, load_schema
    from disttrain.prepare.tabular import PrepareOptions
    from disttrain.prepare.tabular import prepare as run

    flags = label_column or dense_columns or sparse_columns or multi_hot_columns
    if schema and flags:
        raise DisttrainError("data prepare: --schema and the column flags both given; expected one of them")
    chosen = load_schema(schema) if schema else from_flags(
        label=label_column, dense=dense_columns, sparse=sparse_columns, multi_hot=multi_hot_columns,
        transform=dense_transform, hash_rows=hash_rows, min_count=vocab_threshold, delimiter=list_delimiter,
        max_length=max_length, id_order=id_order, raw_ids=raw_ids) if flags else None
    return run(list(inputs), chosen, PrepareOptions(out=Path(out), **options))


def dien_synthetic(out: str | Path, *, samples: int = 100000, users: int = 543060, items: int = 367983,
                   cats: int = 1601, max_history: int = 100, seed: int = 0, force: bool = False) -> dict:
    """DIEN files with a planted sequential signal in `out`: {"train_samples", "test_samples", "mean_history"}."""
    from disttrain.prepare.dien_synthetic import write_synthetic

    data = write_synthetic(out, samples=samples, users=users, items=items, cats=cats, max_history=max_history,
                           seed=seed, force=force)
    return {"train_samples": len(data.train), "test_samples": len(data.test),
            "mean_history": float(data.train.history_lengths.mean())}


def verify_data(directory: str | Path):
    """A processed directory checked against its meta.json (each file's sha256): its rows, tables, fingerprint."""
    from disttrain.data.prepared import open_dataset

    return open_dataset(directory, verify="checksum")


def describe(result: dict, *, kind: str) -> str:
    """The text the CLI prints for an `infer`, `quantize`, `probe` or `simulate` result."""
    from importlib import import_module

    modules = {"infer": "disttrain.serving.infer", "quantize": "disttrain.serving.quantize",
               "probe": "disttrain.planning.probe", "simulate": "disttrain.planning.simulate"}
    return import_module(modules[kind]).describe(result)


_LATE = {"Preempted": "disttrain.runtime.signals", "PREEMPTED": "disttrain.runtime.signals",
         "this_rank": "disttrain.runtime.env", "exit_now": "disttrain.worker"}


def __getattr__(name: str):
    """Imported when asked: what a stopped `train` raises (Preempted; its exit code PREEMPTED), `this_rank()`, and
    `exit_now(code)` (end a process that ran collectives without interpreter teardown)."""
    if name not in _LATE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_LATE[name]), name)


__all__ = ["AFFINITIES", "Config", "DisttrainError", "JobFailed", "PlanReport", "TopologyReport", "__version__",
           "bench", "config_keys", "config_markdown_rows", "config_to_dict", "config_to_yaml", "describe",
           "dien_synthetic", "export", "export_onnx", "import_reference", "infer", "launch", "load_config",
           "load_exported", "plan", "prepare", "prepare_criteo", "probe", "quantize", "ready_configs", "registries",
           "report", "simulate", "topology", "train", "verify_data"]
