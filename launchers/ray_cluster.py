"""`launch.launcher=ray`: Ray Train's `TorchTrainer` (Train V2) runs `launch.num_workers` Ray workers with
`launch.cpus_per_worker` CPUs each; every Ray worker starts the one worker entry point
(`python -m disttrain.worker`) as its child with the torchrun variables set, so pinning, threads, the
allocator and training are exactly those of every other launcher. Ray hands out CPU counts, not CPU ids: each
worker pins itself to its own slice of its node (`DISTTRAIN_CPUS_PER_WORKER`, disttrain.runtime.bootstrap).

Cluster: `launch.ray_address`, else `$RAY_ADDRESS` (set by `ray job submit`), else a local Ray started here.
Results: rank 0's `run.output_dir` (on its node), reported with `ray.train.report` as metrics plus a Ray Train
checkpoint of that directory (`launch.ray_storage`, default ~/ray_results/<run>), and copied into the
driver's `run.output_dir` so `summary.json` is where it is under every launcher.

    ray start --head --dashboard-host=127.0.0.1
    RAY_AUTH_MODE=disabled ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        disttrain launch cluster_configs/ray.yaml
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from disttrain import config as config_mod
from disttrain.config import Config
from disttrain.engine.outputs import run_dir
from disttrain.errors import ConfigError, DisttrainError, missing
from disttrain.runtime.bootstrap import CPU_SLOTS, USER_SET, user_set_variables
from disttrain.runtime.env import RUN_ID, WorkerEnv, free_port, split_endpoint, transport_env, wait_for_tcp
from disttrain.runtime.signals import PREEMPTED
from disttrain.storage import is_remote, join, local

FORWARDED = ("DISTTRAIN_FAULT",)  # test hook: fault injection (disttrain.engine.faults)
REPORTED = ("train_loss", "eval_auc", "eval_logloss", "eval_accuracy", "samples_per_s", "steps", "world_size")


def world_size(cfg: Config) -> int:
    return cfg.launch.num_workers or int(cfg.launch.nproc_per_node) * cfg.launch.nnodes


def cluster_address(cfg: Config) -> str:
    return cfg.launch.ray_address or os.environ.get("RAY_ADDRESS", "")


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail in one line, not after Ray's own minute of reconnecting, when no cluster answers."""
    if address in ("", "auto", "local"):
        return
    key = "launch.ray_address" if not os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS"
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"{key}: got {address!r}, a dashboard (job submission) address; the training driver connects to the "
            "cluster's GCS address (host:6379), or leave it empty inside `ray job submit`"
        )
    host, port = split_endpoint(address.removeprefix("ray://"), key=key,
                                default_port=10001 if address.startswith("ray://") else 6379)
    if not wait_for_tcp(host, port, min(timeout_s, 10.0)):
        raise ConfigError(
            f"{key}: no Ray cluster answers at {host}:{port}; start one with `ray start --head` (or point "
            "launch.ray_address at a running head), or leave both empty to run on a local Ray"
        )


def _die_with_parent() -> None:
    """Run in the child before exec: if the Ray worker dies (the job stopped or preempted), its training process
    gets SIGTERM: it finishes the step, writes a final checkpoint and exits within launch.stop_grace_s."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _train_loop(loop_config: dict) -> None:
    """Runs inside each Ray Train worker: agree on a master address, start the worker entry point, report."""
    import ray.train
    import torch.distributed as dist
    from ray.util import get_node_ip_address

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # The training processes form their own process group; rank 0's node hosts its store. Ray's own
    # group (set up by TorchTrainer) carries the address to everyone.
    endpoint = [None]
    if rank == 0:
        host = get_node_ip_address()
        endpoint = [(host, free_port(host))]
    dist.broadcast_object_list(endpoint, src=0)
    host, port = endpoint[0]
    env = WorkerEnv(rank=rank, world_size=world, local_rank=ctx.get_local_rank(),
                    local_world_size=ctx.get_local_world_size(), master_addr=host, master_port=port)
    workdir = Path(tempfile.mkdtemp(prefix="disttrain-ray-"))
    config_path = workdir / "config.yaml"
    config_path.write_text(loop_config["config_yaml"])
    user_env = loop_config["user_env"]
    child_env = {**os.environ, **loop_config["driver_env"], **user_env, USER_SET: ",".join(user_env), **loop_config["transport_env"],
                 **env.to_environ(), CPU_SLOTS: str(loop_config["cpus_per_worker"]), RUN_ID: loop_config["run_id"],
                 "DISTTRAIN_LAUNCHER": "ray", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "disttrain.worker", "--config", str(config_path)],
                            env=child_env, preexec_fn=_die_with_parent)
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    if code != 0:
        raise RuntimeError(f"disttrain worker rank {rank} exited with code {code}")
    metrics: dict = {"rank": rank}
    checkpoint = None
    if rank == 0:
        import json

        out = Path(loop_config["output_dir"])
        summary = json.loads((out / "summary.json").read_text())
        metrics.update({k: summary[k] for k in REPORTED if summary.get(k) is not None})
        checkpoint = ray.train.Checkpoint.from_directory(str(out))
    ray.train.report(metrics, checkpoint=checkpoint)


JOB_DRIVER = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a `ray job submit`


def _resolved_output_dir(cfg: Config) -> str:
    """`run.output_dir` as an absolute path (or its URL on object storage). Under `ray job submit` the driver runs
    in Ray's temporary copy of the working directory, where a relative path would vanish with the session: refused
    in one line."""
    if is_remote(cfg.run.output_dir):
        return cfg.run.output_dir
    path = Path(local(cfg.run.output_dir)).expanduser()
    if not path.is_absolute() and JOB_DRIVER in os.environ:
        raise ConfigError(f"run.output_dir: got {cfg.run.output_dir!r}, a relative path, but this `ray job submit` driver "
                          f"runs in Ray's temporary copy of the working directory ({os.getcwd()}), deleted with the "
                          "session; expected an absolute path (or ~/...), on shared storage for multi-node clusters")
    return str(path.resolve())


def launch_ray(cfg: Config, config_path: str) -> int:
    try:
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError:
        raise missing("ray", "launch.launcher: ray") from None
    address = cluster_address(cfg)
    check_reachable(address, cfg.launch.timeout_s)
    workers, cpus = world_size(cfg), cfg.launch.cpus_per_worker
    out = _resolved_output_dir(cfg)
    if not address:
        # A private local Ray of its own ("local": never another head on this machine), no token files, on
        # loopback: its node address, and the dashboard whose state API Ray Train's controller polls.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers * cpus), include_dashboard=True,
                 dashboard_host="127.0.0.1", dashboard_port=free_port(), log_to_driver=True,
                 _node_ip_address="127.0.0.1")
    else:
        ray.init(address=address, log_to_driver=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        have = ray.cluster_resources().get("CPU", 0)
        if workers * cpus > have:
            raise ConfigError(
                f"launch.num_workers x launch.cpus_per_worker: {workers} x {cpus} = {workers * cpus} CPUs, but the "
                f"Ray cluster has {have:g}; lower them or add nodes"
            )
        cfg_for_workers = config_mod.load_config(config_path)
        cfg_for_workers.run.output_dir = str(out)
        user_env = user_set_variables(os.environ)
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "config_yaml": config_mod.to_yaml(cfg_for_workers),
                "user_env": user_env,
                "transport_env": transport_env(cfg.launch.socket_ifname),
                "cpus_per_worker": cpus,
                # where rank 0 writes its files (a staging directory when run.output_dir is on object storage)
                "output_dir": str(run_dir(cfg_for_workers)) if is_remote(out) else out,
                "run_id": os.environ.get(RUN_ID) or uuid.uuid4().hex,
                # Ray workers do not inherit the driver's environment: carry disttrain's own switches.
                "driver_env": {k: v for k, v in os.environ.items() if k in FORWARDED},
            },
            torch_config=TorchConfig(backend="gloo", timeout_s=cfg.launch.timeout_s),
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=cfg.launch.backend == "nccl",
                resources_per_worker={"CPU": cpus, **({"GPU": 1} if cfg.launch.backend == "nccl" else {})},
            ),
            run_config=RunConfig(
                name=f"disttrain-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                storage_path=cfg.launch.ray_storage or None,
                # A failed worker group is started again; its workers resume from this run's newest checkpoint.
                failure_config=FailureConfig(max_failures=cfg.launch.max_restarts),
                checkpoint_config=CheckpointConfig(num_to_keep=None),
            ),
        )
        print(f"disttrain: Ray Train job with {workers} worker(s) x {cpus} CPU(s) on "
              f"{address or 'a local Ray'}", flush=True)
        try:
            result = trainer.fit()
        except KeyboardInterrupt:  # SIGTERM or Ctrl-C: the workers get SIGTERM as Ray stops them (see above)
            print(f"disttrain: stopped on request; the workers get launch.stop_grace_s={cfg.launch.stop_grace_s} s "
                  "for a final checkpoint; run it again with train.resume=auto to go on", file=sys.stderr, flush=True)
            return PREEMPTED
        except Exception as exc:  # Ray wraps worker failures in its own error types
            first = str(exc).strip().splitlines()
            raise DisttrainError(f"Ray Train job failed: {first[0] if first else type(exc).__name__}") from None
        _collect(result, out)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.shutdown()


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _collect(result, out: str) -> None:
    """Bring rank 0's output directory (reported as a checkpoint) to the driver's run.output_dir (on object
    storage rank 0 published it there already)."""
    metrics = result.metrics or {}
    where = result.checkpoint.path if result.checkpoint else "(none)"
    if result.checkpoint is not None and not is_remote(out) and not (Path(out) / "summary.json").exists():
        result.checkpoint.to_directory(out)
    shown = " ".join(f"{k}={metrics[k]:.6g}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
                     for k in REPORTED if k in metrics)
    print(f"disttrain: Ray reported {shown}", flush=True)
    print(f"disttrain: summary {join(out, 'summary.json')}; Ray Train checkpoint {where}", flush=True)
