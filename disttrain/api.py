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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from disttrain.config import Config, ready_configs
from disttrain.errors import DisttrainError
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
    from disttrain.engine.build import build_plan
    from disttrain.engine.resources import memory_verdict, rank_limit, rank_needs
    from disttrain.launch import launch_world
    from disttrain.runtime.bootstrap import resolve_nproc
    from disttrain.runtime.topology import detect_topology

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
    from disttrain.launch import prepare_launch

    code = start(cfg, prepare_launch(cfg))
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
        from disttrain.serving.sharded_infer import run_sharded_inference

        return run_sharded_inference(str(checkpoint), nproc=nproc, mode=mode, config=config, precision=precision,
                                     batch_size=batch_size, iterations=iterations,
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

    return {
        "model.name": [*MODELS, *plugin_names(MODEL_GROUP)],
        "model.flavor": [f"{name}: {' '.join(spec.flavors)}" for name, spec in MODELS.items()],
        "data.source": [*sorted({s for spec in MODELS.values() for s in spec.data_sources}),
                        *plugin_names(SOURCE_GROUP)],
        "train.optimizer": list(OPTIMIZERS),
        "launch.launcher": list(LAUNCHERS),
    }


__all__ = ["Config", "DisttrainError", "JobFailed", "PlanReport", "export", "infer", "launch", "load_config",
           "load_exported", "plan", "quantize", "ready_configs", "registries", "train"]
