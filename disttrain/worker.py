"""The one worker entry point. Every launcher starts processes that run `python -m disttrain.worker` (or
`disttrain train`) with the torchrun environment set; a plain process is a world of one.

    python -m disttrain.worker --config FILE [--job FILE] [key=value ...]

What the worker is asked to do (train, serve, probe) and what the launch pre-flight already checked for it is the
job record `--job` names (`disttrain.runtime.job`, written by `disttrain launch` beside the config); without it,
the default job: train, checking everything itself."""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Mapping

from disttrain import config as config_mod
from disttrain.engine.outputs import run_dir
from disttrain.errors import DisttrainError
from disttrain.launchers import LAUNCHERS, launcher_of_worker
from disttrain.runtime.bootstrap import bootstrap
from disttrain.runtime.env import process_environ, this_rank, worker_env_from
from disttrain.runtime.job import TRAIN, Job, read_job
from disttrain.runtime.signals import PREEMPTED, Preempted, StopSignals, die_with_parent


def run_worker(cfg: config_mod.Config, environ: Mapping[str, str] | None = None, *, job: Job = TRAIN,
               reexec: bool = True) -> dict | None:
    """Place (pin, threads, allocator; may re-execute this process once, unless `reexec` is false), join the
    process group, do the `job`: train (or serve, for `disttrain infer --nproc`; or probe, for `disttrain probe`);
    returns the summary on rank 0. `environ`: the torchrun variables (this process's environment by default)."""
    environ = process_environ() if environ is None else environ
    cfg = copy.deepcopy(cfg)  # the caller's config stays as it was; this process's is resolved, then frozen
    placement = bootstrap(cfg, environ, reexec=reexec)  # before torch is imported: nothing is lost by a re-exec
    from disttrain.planning.build import apply_data_shapes

    apply_data_shapes(cfg).freeze()  # checked once (kept with the config), shaped by its data, then read-only
    launcher = launcher_of_worker(environ)
    if launcher != "none":
        die_with_parent()  # a launcher that dies (even by SIGKILL) takes its workers with it, after their grace
    stops = StopSignals(cfg.launch.stop_grace_s).install()
    if job.task == "serve":
        # The infer command prints the figures (or --json) on stdout; workers' logs would bury them. Errors
        # still reach stderr.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the process's stdout until it exits)

    from disttrain.collectives import open_collectives
    from disttrain.engine.trainer import Trainer
    from disttrain.runtime.affinity import apply_threads
    from disttrain.runtime.backend import training_device

    env = worker_env_from(environ)
    apply_threads(placement["threads"])
    if env.rank == 0 and job.task != "probe":
        out = cfg.run.output_dir
        try:
            (run_dir(cfg) / "config.yaml").write_text(config_mod.to_yaml(cfg))
        except OSError as exc:
            raise DisttrainError(f"run.output_dir: {out} is not writable ({exc.strerror or exc}); expected a "
                                 "directory this job can create files in") from None
        print("resolved config:\n" + config_mod.to_yaml(cfg), flush=True)
    device = training_device(cfg.launch.backend, placement)
    horovod = launcher in LAUNCHERS and LAUNCHERS[launcher].horovod_collectives
    comm = open_collectives(env, cfg, horovod=horovod, device=device)
    if job.task == "probe":  # `disttrain probe`: measure the machine's rates instead of training
        from disttrain.collectives import close_collectives
        from disttrain.planning.probe import run_probe

        result = run_probe(cfg, env, comm, placement)
        close_collectives(comm)
        if result is not None:
            import json

            (run_dir(cfg) / "probe.json").write_text(json.dumps(result, indent=2))
        return result
    try:
        return _run(cfg, env, comm, job, Trainer(cfg, env, comm, launcher=launcher, placement=placement,
                                                 device=device, stops=stops, job=job))
    except RuntimeError as exc:
        from disttrain.engine.stall import describe_failure, is_collective_failure

        if not is_collective_failure(exc):
            raise
        raise DisttrainError(describe_failure(exc, comm, cfg.launch.timeout_s)) from None


def _run(cfg: config_mod.Config, env, comm, job: Job, trainer) -> dict | None:
    from disttrain.collectives import close_collectives
    from disttrain.engine.summary import write_json
    from disttrain.serving.modes import serve as serve_sharded

    if job.task == "serve":  # `disttrain infer --nproc N`: serve the checkpoint, not train; figures to infer.json
        request = job.serve
        summary = serve_sharded(trainer, request["mode"], request["iterations"], request.get("exact_max_length", 0))
        if summary is not None:
            write_json(run_dir(cfg) / "infer.json", summary)
    else:
        try:
            summary = trainer.run()
        except Preempted:
            close_collectives(comm)  # every rank agreed to stop after the same step
            raise
    close_collectives(comm)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disttrain.worker")
    parser.add_argument("--config", default=None)
    parser.add_argument("--job", default=None, help="the job record `disttrain launch` wrote (default: train)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    rank = this_rank()
    try:
        cfg = config_mod.load_config(args.config, args.overrides)
        run_worker(cfg, job=read_job(args.job))
    except DisttrainError as exc:
        print(f"disttrain: error (rank {rank}): {exc}", file=sys.stderr, flush=True)
        return 2
    except Preempted as stop:
        if rank == "0":
            print(f"disttrain: {stop}", file=sys.stderr, flush=True)
        return PREEMPTED
    return 0


def exit_now(code: int) -> None:
    """Leave without interpreter teardown: the work is done and flushed, and tearing down C++ statics while
    communication threads still exist can abort ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
