"""`disttrain launch`: check everything that can fail before any process starts, then start the workers with
`launch.launcher` (the table in `disttrain.launchers`).

The pre-flight: the config against the registries, the backend, the pinning plan, the sharding plan, each rank's
memory against what it may use, the output and checkpoint directories (writable, room for a checkpoint), the
data (checksums once, here, not in every worker) and the checkpoint to resume (whole, and fitting this model);
then the resolved config the workers read is written to `<run.output_dir>/config.yaml`, and beside it the job
record (`disttrain.runtime.job`): what the workers are asked to do and what this pre-flight already checked for
them. Nothing is handed over through this process's environment.
"""

from __future__ import annotations

import copy

from disttrain import config as config_mod
from disttrain.engine.checkpoint import check_fits, find_checkpoint, read_manifest, remote, verify
from disttrain.engine.checkpoint.load import renamed_tables
from disttrain.engine.checkpoint.verify import read_meta
from disttrain.engine.outputs import new_run_dir
from disttrain.launchers import launcher_for
from disttrain.planning.build import build_plan, check_config, data_source_spec
from disttrain.planning.resources import check_directories, check_memory, checkpoint_bytes
from disttrain.runtime.backend import resolve_backend
from disttrain.runtime.bootstrap import placements_for, resolve_nproc, user_set_variables
from disttrain.runtime.job import Job, job_path, write_job
from disttrain.runtime.topology import detect_topology


def load_checked(path: str | None, overrides: list[str]) -> config_mod.Config:
    """A config file plus overrides, checked against the registries too (model, data source, optimizer,
    launcher): every key's problem is a one-line error before anything runs."""
    cfg = config_mod.load_config(path, overrides)
    check_config(cfg)
    launcher_for(cfg.launch.launcher)
    return cfg


def launch_world(cfg: config_mod.Config) -> tuple[int, int]:
    """(world size, ranks on this machine; 0 = not known here) for `launch.launcher`."""
    return launcher_for(cfg.launch.launcher).world(cfg)


def resolve_job(cfg: config_mod.Config, *, task: str = "train",
                serve: dict | None = None) -> tuple[config_mod.Config, str]:
    """Validate everything that can fail before any process starts (config, plan, pinning, data, the checkpoint
    to resume) on a copy of `cfg` (the caller's is left as it is); resolve `launch.backend` and
    `launch.nproc_per_node=auto`; write the resolved config the workers will read and, beside it, their job
    (`task`, the `serve` request, what was checked here). Returns the resolved config, frozen, and its path."""
    cfg = copy.deepcopy(cfg)
    launcher = launcher_for(cfg.launch.launcher)
    check_config(cfg)
    # Where the workers may have GPUs the driver lacks (Ray), nccl is checked where they run.
    cfg.launch.backend = resolve_backend(cfg.launch.backend, for_training=launcher.driver_sees_workers)
    topology = detect_topology()
    cfg.launch.nproc_per_node = resolve_nproc(cfg, topology)
    world, local = launcher.world(cfg)
    if local:  # Ray workers land on whichever nodes have room and place themselves there
        placements_for(cfg, topology, nproc=local, user_env=user_set_variables())
    model, plan = build_plan(cfg, world)
    launcher.preflight(cfg)
    checked: dict = {}
    if launcher.driver_sees_workers:  # else the workers may see other storage and memory than this driver
        check_memory(cfg, model, plan, local_ranks=local or world)
        check_directories(cfg, checkpoint_bytes(cfg, model, plan))
        checked["resources_checked"] = True  # the workers need not check again (they would race each other)
        data_source_spec(cfg).preflight(cfg)
        if cfg.data.verify == "checksum" and cfg.data.path:
            checked["verified_data"] = cfg.data.path
        if cfg.train.resume:
            checked["verified_checkpoint"] = check_resume(cfg, model)
    job = Job(task=task, serve=serve, **checked)
    path = new_run_dir(cfg.freeze()) / "config.yaml"
    path.write_text(config_mod.to_yaml(cfg))
    write_job(job, job_path(path))
    return cfg, str(path.resolve())


def check_resume(cfg: config_mod.Config, model) -> str:
    """Before any worker starts: the checkpoint to resume exists, is whole and fits this model. Returns the
    resolved directory hashed here ("" when none was: no checkpoint yet, or one on object storage)."""
    path = find_checkpoint(cfg.train.resume, cfg.checkpoint.dir)
    if path is None:
        return ""
    dense = {n: list(p.shape) for n, p in model.named_parameters() if not n.startswith("embeddings.")}
    if remote.is_copy(path):  # object storage: the manifest and meta here; each worker checks what it fetches
        where = remote.source_of(path)
        try:
            read_manifest(path)
            meta = renamed_tables(read_meta(path), model.tables)
        finally:
            remote.release(path)
        check_fits(meta, where, model=cfg.model.name, tables=model.tables, dense_shapes=dense)
        return ""
    meta = renamed_tables(verify(path), model.tables)
    check_fits(meta, path, model=cfg.model.name, tables=model.tables, dense_shapes=dense)
    return str(path.resolve())  # the workers check sizes, not hashes, of what was just hashed


def launch(cfg: config_mod.Config, config_path: str) -> int:
    """Start the workers with `launch.launcher`; the exit code of the job."""
    return launcher_for(cfg.launch.launcher).start(cfg, config_path)


def launch_as(cfg: config_mod.Config, task: str, serve: dict | None = None) -> int:
    """Pre-flight and launch workers whose job is `task` ("serve" with the `serve` request, or "probe") instead of
    training (`disttrain.runtime.job.Job`)."""
    return launch(*resolve_job(cfg, task=task, serve=serve))
