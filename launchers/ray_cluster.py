"""`launch.launcher=ray`, the driver: Ray Train (Train V2) runs `launch.num_workers` Ray workers with
`launch.cpus_per_worker` CPUs each; every Ray worker starts the one worker entry point
(`python -m disttrain.worker`) as its child with the torchrun variables set (disttrain.launchers.ray_worker), so
pinning, threads, the allocator and training are exactly those of every other launcher. Ray hands out CPU counts, not CPU ids: each
worker pins itself to its own slice of its node (`DISTTRAIN_CPUS_PER_WORKER`, disttrain.runtime.bootstrap).

Addresses: rank 0's node hosts the job's store, on that node's Ray address (the training processes bind it
there, not on every interface: disttrain.collectives), and gloo listens on the interface of each node's Ray
address. Ray's own torch process group is not used (it would listen on every interface): Ray Train's
synchronization actor carries rank 0's address to the others.

Cluster: `launch.ray_address`, else `$RAY_ADDRESS` (set by `ray job submit`), else a private local Ray started
here, every process of it on loopback. Results: rank 0's `run.output_dir` (on its node), reported with
`ray.train.report` as metrics plus a Ray Train checkpoint of that directory (`launch.ray_storage`, default
~/ray_results/<run>), and copied into the driver's `run.output_dir` so `summary.json` is where it is under every
launcher.

Stopping: SIGTERM or Ctrl-C to the driver (`ray job stop` sends SIGTERM) is posted once on the job's stop board (a
Ray actor of no CPU); each Ray worker passes it to its training process as SIGTERM, so the ranks finish the same
step, write a final checkpoint and exit with 75, which the driver returns. A second signal, or a job still running
`launch.stop_grace_s` + 5 s after the first, stops at once (Ray shuts the workers down).

    export RAY_AUTH_MODE=disabled RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # one machine, on loopback (README)
    ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- disttrain launch cluster_configs/ray.yaml
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from disttrain import config as config_mod
from disttrain.config import Config
from disttrain.engine.outputs import run_dir
from disttrain.errors import ConfigError, DisttrainError, missing
from disttrain.launchers.ray_worker import REPORTED, StopBoard, train_loop
from disttrain.runtime.bootstrap import user_set_variables
from disttrain.runtime.env import RUN_ID, free_port, is_loopback, split_endpoint, wait_for_tcp
from disttrain.runtime.job import job_path
from disttrain.runtime.signals import DUPLICATE_S, PREEMPTED, STOP_SIGNALS
from disttrain.storage import is_remote, join, local

FORWARDED = ("DISTTRAIN_FAULT",)  # test hook: fault injection (disttrain.engine.faults)
# A private local Ray: Ray takes a node's address from the routing table even when told 127.0.0.1 (and binds its
# servers there, or on every interface), unless multi-node clusters are off; a fresh token of this run's own,
# never written to a file, unless the user chose an auth mode.
PRIVATE_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


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


def private_ray_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What a private local Ray starts with (on top of `environ`): loopback only, token auth with a fresh token
    unless the user chose an auth mode."""
    if "RAY_AUTH_MODE" in environ:
        return dict(PRIVATE_RAY_ENV)
    return {**PRIVATE_RAY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


HEALTH_POLL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # how often Ray Train's controller polls the worker group


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in this process's environment (read by Ray when it is imported and by the processes it starts),
    restored afterwards: a second launch in this process decides afresh."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _start_private_ray(ray, cpus: int) -> None:
    """A private local Ray ("local": never another head on this machine), every process of it on loopback: its
    node address, its servers, the dashboard whose state API Ray Train's controller polls."""
    from ray.util import get_node_ip_address

    if not is_loopback(get_node_ip_address()):
        raise DisttrainError("launch.ray_address: empty, so disttrain starts a local Ray on loopback, but Ray "
                             "was imported in this process before with multi-node clusters on; start a head "
                             "(`ray start --head --node-ip-address=127.0.0.1`) and set launch.ray_address")
    ray.init(address="local", num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=free_port(), log_to_driver=True, _node_ip_address="127.0.0.1")


def _backend_config(*, gpus: bool):
    """Ray Train's backend for processes that form their own process group: nothing to set up; workers on a node
    see all of the job's GPUs there, as under TorchTrainer (each picks its own)."""
    from ray.train.backend import Backend, BackendConfig

    class OwnProcessGroup(Backend):
        share_cuda_visible_devices = gpus

    class OwnProcessGroupConfig(BackendConfig):
        @property
        def backend_cls(self):
            return OwnProcessGroup

    return OwnProcessGroupConfig()


def launch_ray(cfg: Config, config_path: str) -> int:
    address = cluster_address(cfg)
    check_reachable(address, cfg.launch.timeout_s)
    out = _resolved_output_dir(cfg)
    values = {} if address else private_ray_env(os.environ)
    if HEALTH_POLL not in os.environ:  # Ray Train's 2 s default poll adds ~3 s to the end of every job
        values = {**values, HEALTH_POLL: "0.5"}
    with _environment(values):
        try:
            import ray
            import ray.train  # noqa: F401 - the missing-package error before anything starts
        except ImportError:
            raise missing("ray", "launch.launcher: ray") from None
        workers, cpus = world_size(cfg), cfg.launch.cpus_per_worker
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            _start_private_ray(ray, max(os.cpu_count() or 1, workers * cpus))
        try:
            return _run_job(ray, cfg, config_path, out, address=address)
        finally:
            ray.shutdown()


def _run_job(ray, cfg: Config, config_path: str, out: str, *, address: str) -> int:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    workers, cpus, gpu = world_size(cfg), cfg.launch.cpus_per_worker, cfg.launch.backend == "nccl"
    have = ray.cluster_resources().get("CPU", 0)
    if workers * cpus > have:
        raise ConfigError(
            f"launch.num_workers x launch.cpus_per_worker: {workers} x {cpus} = {workers * cpus} CPUs, but the "
            f"Ray cluster has {have:g}; lower them or add nodes"
        )
    cfg_for_workers = config_mod.load_config(config_path)
    cfg_for_workers.run.output_dir = str(out)
    user_env = user_set_variables(os.environ)
    board = ray.remote(num_cpus=0)(StopBoard).remote()
    trainer = DataParallelTrainer(
        train_loop,
        train_loop_config={
            "config_yaml": config_mod.to_yaml(cfg_for_workers),
            "job_json": job_path(config_path).read_text() if job_path(config_path).is_file() else "",
            "user_env": user_env,
            "socket_ifname": cfg.launch.socket_ifname,
            "cpus_per_worker": cpus,
            # where rank 0 writes its files (a staging directory when run.output_dir is on object storage)
            "output_dir": str(run_dir(cfg_for_workers)) if is_remote(out) else out,
            "run_id": os.environ.get(RUN_ID) or uuid.uuid4().hex,
            # Ray workers do not inherit the driver's environment: carry disttrain's own switches.
            "driver_env": {k: v for k, v in os.environ.items() if k in FORWARDED},
            "stop_board": board,
        },
        backend_config=_backend_config(gpus=gpu),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cpus, **({"GPU": 1} if gpu else {})}),
        run_config=RunConfig(
            name=f"disttrain-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=cfg.launch.ray_storage or None,
            # A failed worker group is started again; its workers resume from this run's newest checkpoint.
            failure_config=FailureConfig(max_failures=cfg.launch.max_restarts),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    print(f"disttrain: Ray Train job with {workers} worker(s) x {cpus} CPU(s) on {address or 'a local Ray'}",
          flush=True)
    with DriverStop(board, grace_s=cfg.launch.stop_grace_s) as stop:
        try:
            result = trainer.fit()
        except KeyboardInterrupt:  # a second signal, or no end within the grace period
            print("disttrain: stopped at once; Ray stops the workers (no final checkpoint unless they had "
                  "written it)", file=sys.stderr, flush=True)
            return 128 + (stop.signum or signal.SIGINT)
        except Exception as exc:  # Ray wraps worker failures in its own error types
            first = str(exc).strip().splitlines()
            raise DisttrainError(f"Ray Train job failed: {first[0] if first else type(exc).__name__}") from None
    codes = ray.get(board.exit_codes.remote())
    if any(code != 0 for code in codes.values()):
        return _stopped(codes)
    _collect(result, out)
    return 0


class DriverStop:
    """The driver's side of a stop request while the job runs: the first SIGTERM or SIGINT is posted on the stop
    board once (the training processes finish the step, save and exit with 75); a second one more than
    DUPLICATE_S later, or a job still running `grace_s` + `margin_s` after the first, raises KeyboardInterrupt in
    the main thread (stop at once)."""

    def __init__(self, board, *, grace_s: float, margin_s: float = 5.0):
        self.board, self.grace_s, self.margin_s = board, grace_s, margin_s
        self.signum, self.first_at, self.late = 0, 0.0, False
        self._done, self._lock = threading.Event(), threading.Lock()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> DriverStop:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:  # no late signal once the default handlers are back
            self._done.set()
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, _frame) -> None:
        now = time.monotonic()
        if not self.signum:
            self.signum, self.first_at = signum, now
            print(f"disttrain: {signal.Signals(signum).name}: asking the workers to finish the step and save a "
                  f"final checkpoint (up to {self.grace_s:g} s; a second signal stops them at once)",
                  file=sys.stderr, flush=True)
            threading.Thread(target=self._request, daemon=True).start()
        elif self.late or now - self.first_at > DUPLICATE_S:
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def _request(self) -> None:
        self.board.request.remote()  # not from the handler itself: it may run inside a Ray call
        self._done.wait(self.grace_s + self.margin_s)
        with self._lock:
            if not self._done.is_set():
                self.late = True
                signal.pthread_kill(threading.main_thread().ident, self.signum)  # wakes a blocked main thread


def _stopped(codes: dict[int, int]) -> int:
    """The job stopped on request: 75 when every training process saved and left in order, else the first other
    exit code."""
    other = [code for _, code in sorted(codes.items()) if code not in (0, PREEMPTED)]
    if other:
        print(f"disttrain: stopped on request; a worker exited with code {other[0]}", file=sys.stderr, flush=True)
        return other[0] if other[0] > 0 else 128 - other[0]
    print(f"disttrain: stopped on request after a final checkpoint (exit code {PREEMPTED}); run it again with "
          "train.resume=auto to go on", file=sys.stderr, flush=True)
    return PREEMPTED


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
