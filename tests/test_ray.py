"""The Ray launcher against a real local Ray head: `ray job submit` of the ready Ray config, results and
reported metrics, and the same training as the local launcher; models of one's own (a package outside the
repository, the examples) carried to the workers by the job's working directory."""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from disttrain.runtime.env import free_port
from tests.launch_helpers import (
    BIN,
    EXAMPLE_SHORT,
    EXAMPLES,
    PARITY,
    ROOT,
    assert_same_training,
    clean_env,
    cli,
    disttrain,
    summary,
)

pytest.importorskip("ray", reason="Ray is installed by `make test` (the [ray] extra)")


def _stop_head(temp_dir: str, gcs_port: int) -> None:
    """Stop the Ray processes of this head only (not another Ray on the machine): those naming its temp dir or its
    GCS port (the client server `ray start` leaves behind names only the port), and their children."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part or part.endswith(f":{gcs_port}") for part in proc.info["cmdline"] or []):
                # Their children too: Ray's agents rename themselves (`ray::DashboardAgent`) and outlive the
                # raylet that started them.
                found.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    mine = list(found.values())
    for proc in mine:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(mine, timeout=5)
    for proc in alive:
        proc.kill()


def _start_head(temp_dir: str, env: dict) -> tuple[dict, subprocess.CompletedProcess]:
    base = random.randrange(20000, 40000, 100)
    ports = {"gcs": free_port(), "dashboard": free_port()}
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={ports['gcs']}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
           f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--min-worker-port={base}", f"--max-worker-port={base + 99}",
           "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    return ports, subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)


@pytest.fixture(scope="module")
def ray_head():
    """A private Ray head on loopback: its own temp dir (short: Ray's socket paths are length-limited) and
    ports, the dashboard (job submission) bound to 127.0.0.1, no auth tokens. A start that fails (a port
    taken meanwhile) is cleaned up and tried again with other ports, twice at most."""
    env = clean_env(RAY_AUTH_MODE="disabled")
    failures = []
    for _ in range(3):
        temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        ports, started = _start_head(temp_dir, env)
        if started.returncode == 0:
            break
        failures.append(started.stdout[-1500:] + started.stderr[-1500:])
        _stop_head(temp_dir, ports["gcs"])
        shutil.rmtree(temp_dir, ignore_errors=True)
    else:
        pytest.fail("ray start --head failed 3 times:\n" + "\n---\n".join(failures))
    try:
        yield {**ports, "temp_dir": temp_dir, "env": env}
    finally:
        _stop_head(temp_dir, ports["gcs"])
        shutil.rmtree(temp_dir, ignore_errors=True)


RAY_WORKERS = ["launch.launcher=ray", "launch.num_workers=2", "launch.cpus_per_worker=1"]


def _submit(ray_head, working_dir: Path, *entrypoint: str, cwd: Path) -> str:
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{ray_head['dashboard']}",
         f"--working-dir={working_dir}", "--", *entrypoint],
        capture_output=True, text=True, env=ray_head["env"], timeout=600, cwd=cwd)
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
    return job.stdout + job.stderr


@pytest.mark.slow
def test_ray_job_submit_trains_a_model_package_of_ones_own_like_the_local_launcher(ray_head, user_package,
                                                                                     tmp_path):
    """`ray job submit` with a model package of one's own (written by the test outside the repository) as the
    job's working directory: the module travels to the driver and the workers; the ready config `ray` is found
    by name (there is no cluster_configs/ there). The run equals the package's local 2-rank run."""
    from tests.test_plugins import JOB

    package, local = user_package
    out = tmp_path / "ray-out"
    storage = tmp_path / "ray-storage"
    logs = _submit(ray_head, package, "disttrain", "launch", "ray", *JOB, *RAY_WORKERS, f"run.output_dir={out}",
                   f"launch.ray_storage={storage}", cwd=tmp_path)
    assert "succeeded" in logs

    result = summary(out)
    assert result["launcher"] == "ray" and result["world_size"] == 2 and result["model"] == "mymodels.tower:SPEC"
    assert_same_training(result, local)
    # Every Ray worker placed itself: its own process, its own CPU slice of the node, threads to match.
    workers = result["workers"]
    assert [w["rank"] for w in workers] == [0, 1] and len({w["pid"] for w in workers}) == 2
    if len(os.sched_getaffinity(0)) >= 2:
        assert not set(workers[0]["cpus"]) & set(workers[1]["cpus"])
    assert all(w["threads"] == len(w["cpus"]) for w in workers)
    # ray.train.report carried the metrics (printed by the driver) and the results as a checkpoint.
    reported = next(line for line in logs.splitlines() if line.startswith("disttrain: Ray reported"))
    assert f"train_loss={result['train_loss']:.6g}" in reported and f"eval_auc={result['eval_auc']:.6g}" in reported
    checkpoints = list(storage.glob("disttrain-*/checkpoint_*/summary.json"))
    assert len(checkpoints) == 1 and summary(checkpoints[0].parent)["train_loss"] == result["train_loss"]


def test_unreachable_ray_cluster_is_one_line(tmp_path):
    port = free_port()
    start = time.monotonic()
    result = cli("launch", str(ROOT / "cluster_configs/ray.yaml"), f"launch.ray_address=127.0.0.1:{port}",
                 "launch.timeout_s=2", f"run.output_dir={tmp_path}/out", env={"RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"launch.ray_address: no Ray cluster answers at 127.0.0.1:{port}" in lines[0]
    assert "ray start --head" in lines[0]
    assert time.monotonic() - start < 60
    assert not Path(tmp_path / "out" / "summary.json").exists()


def test_too_few_cpus_on_the_cluster_is_one_line(ray_head, tmp_path):
    result = disttrain("launch", "cluster_configs/ray.yaml", "launch.num_workers=2", "launch.cpus_per_worker=4",
                       "train.batch_size=64", f"launch.ray_address=127.0.0.1:{ray_head['gcs']}",
                       f"run.output_dir={tmp_path}/out", env=ray_head["env"], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "2 x 4 = 8 CPUs, but the Ray cluster has 2" in result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_ray_restarts_a_failed_worker_group_from_the_last_checkpoint(ray_head, local_reference, tmp_path):
    """`launch.ray_address` (no job submission: the driver here, the workers on the cluster) and
    FailureConfig(max_failures=launch.max_restarts): rank 1 is SIGKILLed at step 12; Ray starts the worker
    group again, which resumes from step 10 and ends where an uninterrupted run ends."""
    out = tmp_path / "restarted"
    env = {**ray_head["env"], "DISTTRAIN_FAULT": "1:12:kill"}
    result = disttrain("launch", "cluster_configs/ray.yaml", *PARITY, f"run.output_dir={out}",
                       f"launch.ray_address=127.0.0.1:{ray_head['gcs']}", f"launch.ray_storage={tmp_path}/st",
                       "launch.max_restarts=1", f"checkpoint.dir={tmp_path}/ck", "checkpoint.every_steps=5",
                       env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr and "at step 10" in result.stdout + result.stderr
    assert summary(out)["launcher"] == "ray"
    assert_same_training(summary(out), local_reference)


@pytest.mark.slow
def test_ray_job_submit_runs_each_example(ray_head, example_runs, tmp_path):
    """The repository is the job's working directory; each example's module travels with it. One job runs the
    examples one after the other (a job's start costs more than an example's training)."""
    runs = [shlex.join(["disttrain", "launch", EXAMPLES[name], *EXAMPLE_SHORT, *RAY_WORKERS,
                        f"run.output_dir={tmp_path}/{name}", f"launch.ray_storage={tmp_path}/st-{name}"])
            for name in sorted(EXAMPLES)]
    _submit(ray_head, ROOT, "sh", "-c", " && ".join(runs), cwd=tmp_path)
    for name in sorted(EXAMPLES):
        result = summary(tmp_path / name)
        assert result["launcher"] == "ray" and result["world_size"] == 2, name
        assert_same_training(result, example_runs(name)["local"])
