"""The Ray launcher against a real local Ray head: `ray job submit` of the ready Ray config, results and
reported metrics, and the same training as the local launcher; models of one's own (a package outside the
repository, the examples) carried to the workers by the job's working directory; SIGTERM to the driver and
`ray job stop` give a final checkpoint from which `train.resume=auto` ends like an uninterrupted run; the job
listens on its node's address only, and a Ray that disttrain starts itself on loopback only."""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
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
    # The dashboard's processes leave within a second or two; the GCS server, the raylet, the runtime-env agent
    # and the client server do not answer SIGTERM at all (waiting for them cost 5 s per head): killed then.
    alive = _wait_gone(mine, 2)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    _wait_gone(alive, 5)


def _wait_gone(procs: list, timeout: float) -> list:
    """Those of `procs` still running after up to `timeout` s. A zombie counts as gone: these processes are not
    this one's children, and once their parent is gone too the machine's init may leave them unreaped (what
    psutil.wait_procs waits out to the end)."""
    import psutil

    def running(proc) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    alive = [proc for proc in procs if running(proc)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [proc for proc in alive if running(proc)]
    return alive


def _start_head(temp_dir: str, env: dict) -> tuple[dict, subprocess.CompletedProcess]:
    base = random.randrange(20000, 40000, 100)
    ports = {"gcs": free_port(), "dashboard": free_port(), "worker_ports": (base, base + 99)}
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={ports['gcs']}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
           f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
           f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
           f"--runtime-env-agent-port={free_port()}", f"--min-worker-port={base}", f"--max-worker-port={base + 99}",
           "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    return ports, subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)


# Ray Train's controller polls its worker group every 2 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S): every start, end and
# failure of a worker group waited up to that long for the next poll (about 3 s per job). A missed poll is not a
# failure (only one unanswered for RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 10 min, is). The drivers pass it on to
# the controller and its workers; the head's processes (and so the drivers of `ray job submit`) have it too.
FAST_POLLS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


@pytest.fixture(scope="module")
def ray_head():
    """A private Ray head: its own temp dir (short: Ray's socket paths are length-limited) and ports, the
    dashboard (job submission) bound to 127.0.0.1, no auth tokens. Its node address is the machine's own, as on a
    multi-node cluster: Ray 2.60 takes it from the routing table although told 127.0.0.1 (only
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps it on loopback), so the GCS, raylet and Ray's workers listen beyond
    loopback while the tests run. A start that fails (a port taken meanwhile) is cleaned up and tried again with
    other ports, twice at most."""
    env = clean_env(RAY_AUTH_MODE="disabled", **FAST_POLLS)
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
                 "launch.timeout_s=1", f"run.output_dir={tmp_path}/out", env={"RAY_AUTH_MODE": "disabled"})
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


# Long enough to be stopped mid-run after the first interval lines reach the driver (Ray forwards worker logs
# with a lag: the stop lands near step 300 on two busy cores), short enough to train twice (6 ms a step).
LONG = ["model.flavor=debug", "train.batch_size=64", "train.steps=1000", "train.log_every=50", "train.seed=5",
        "data.eval_batches=2", "run.progress=false", "run.tensorboard=false"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The long job under the local launcher, uninterrupted: where a stopped and resumed Ray run must end."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = disttrain("launch", *LONG, "launch.nproc_per_node=2", f"run.output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    return summary(out)


def _start_until(args: list[str], env: dict, marker: str) -> tuple[subprocess.Popen, list[str]]:
    """`disttrain ARGS` in the background, read until a line with `marker` (its output so far)."""
    proc = subprocess.Popen([str(BIN / "python"), "-m", "disttrain.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return proc, lines
    proc.wait()
    pytest.fail(f"exited with {proc.returncode} before {marker!r}:\n" + "".join(lines)[-4000:])


def _listening(pid: int) -> set[tuple[str, int]]:
    import psutil

    try:
        return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return set()


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.split("%")[0])
    return getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1 is 127.0.0.1


def _training_processes(run_id: str) -> dict[int, dict[str, str]]:
    """The training processes (`disttrain.worker`) of one run, found by its DISTTRAIN_RUN_ID: pid -> environ."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "disttrain.worker" in (proc.info["cmdline"] or []):
                environ = proc.environ()
                if environ.get("DISTTRAIN_RUN_ID") == run_id:
                    found[proc.pid] = environ
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _temp_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("disttrain-ray-*"))


@pytest.mark.slow
def test_ray_sigterm_gives_a_final_checkpoint_and_resume_auto_ends_like_the_uninterrupted_run(
        ray_head, uninterrupted, tmp_path):
    """SIGTERM to the driver (`launch.ray_address`: the head's node address is the machine's own): the training
    processes finish the step, save and exit; the driver exits with 75 and leaves no temporary directory. While
    it runs, the job's own sockets (the store, gloo) listen on the node's address and nowhere wider, and the Ray
    workers hosting them open nothing but Ray's own worker port (no torch process group of Ray's). Then
    `train.resume=auto` on a Ray that disttrain starts itself, every process of it listening on loopback only,
    ends where the uninterrupted run ends."""
    import psutil

    ck, run_id, temp_before = tmp_path / "ck", uuid.uuid4().hex, _temp_dirs()
    proc, lines = _start_until(
        ["launch", "cluster_configs/ray.yaml", *LONG, f"launch.ray_address=127.0.0.1:{ray_head['gcs']}",
         f"launch.ray_storage={tmp_path}/st", f"checkpoint.dir={ck}", f"run.output_dir={tmp_path}/stopped"],
        {**ray_head["env"], "DISTTRAIN_RUN_ID": run_id}, marker="step    100")
    training = _training_processes(run_id)
    sockets = {pid: _listening(pid) for pid in training}
    ray_workers = {psutil.Process(pid).ppid() for pid in training}
    ray_sockets = {ip_port for pid in ray_workers for ip_port in _listening(pid)}
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    log = "".join(lines) + rest
    assert proc.returncode == 75, log[-4000:]

    rank0 = next(pid for pid, environ in training.items() if environ["RANK"] == "0")
    node, store_port = training[rank0]["MASTER_ADDR"], int(training[rank0]["MASTER_PORT"])
    assert len(training) == 2 and not _ip(node).is_unspecified
    assert (node, store_port) in {(str(_ip(ip)), port) for ip, port in sockets[rank0]}, sockets
    assert {_ip(ip) for found in sockets.values() for ip, _ in found} == {_ip(node)}, sockets
    low, high = ray_head["worker_ports"]
    assert ray_sockets and all(low <= port <= high for _, port in ray_sockets), ray_sockets

    saved = sorted(p.name for p in ck.iterdir())
    assert len(saved) == 1 and "stopped after step" in log and saved[0] in log
    assert "stopped on request after a final checkpoint (exit code 75)" in log
    step = int(saved[0].removeprefix("step_"))
    assert 100 <= step < 1000
    assert _temp_dirs() <= temp_before
    assert not [pid for pid in training if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]

    env = clean_env(**FAST_POLLS)
    env.pop("RAY_ADDRESS", None)
    proc, lines = _start_until(["launch", "cluster_configs/ray.yaml", *LONG, f"checkpoint.dir={ck}",
                                "train.resume=auto", f"launch.ray_storage={tmp_path}/st2",
                                f"run.output_dir={tmp_path}/resumed"], env, marker="samples/s")
    driver = psutil.Process(proc.pid)
    local_ray = {ip_port for p in [driver, *driver.children(recursive=True)] for ip_port in _listening(p.pid)}
    rest, _ = proc.communicate(timeout=300)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log[-4000:]
    assert local_ray and all(_ip(ip).is_loopback for ip, _ in local_ray), local_ray
    assert f"at step {step}" in log
    assert_same_training(summary(tmp_path / "resumed"), uninterrupted)
    assert _temp_dirs() <= temp_before


def _job_api(ray_head, path: str) -> dict:
    """GET the dashboard's job API (what `ray job status` and `ray job logs` read, without a Ray client's start
    each time: those cost a new interpreter and Ray's import, seconds of CPU, every poll)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{ray_head['dashboard']}/api/jobs/{path}", timeout=60) as reply:
        return json.loads(reply.read())


@pytest.mark.slow
def test_ray_job_stop_gives_a_final_checkpoint(ray_head, tmp_path):
    """`ray job stop` sends the driver SIGTERM and waits RAY_JOB_STOP_WAIT_TIME_S (3 s unless the job's runtime
    env says otherwise) before SIGKILL: given the time, the job ends like a SIGTERMed driver."""
    ray, address = str(BIN / "ray"), f"--address=http://127.0.0.1:{ray_head['dashboard']}"
    job_id, ck = f"stop-{uuid.uuid4().hex}", tmp_path / "ck"
    runtime_env = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "60"}})
    subprocess.run([ray, "job", "submit", address, f"--submission-id={job_id}", "--no-wait",
                    f"--runtime-env-json={runtime_env}", "--", "disttrain", "launch", "ray", *LONG,
                    f"checkpoint.dir={ck}", f"run.output_dir={tmp_path}/out",
                    f"launch.ray_storage={tmp_path}/st"],
                   check=True, capture_output=True, env=ray_head["env"], timeout=120, cwd=tmp_path)

    def logs() -> str:
        return _job_api(ray_head, f"{job_id}/logs")["logs"]

    deadline = time.monotonic() + 300
    while "step    100" not in (log := logs()):
        status = _job_api(ray_head, job_id)["status"]
        assert status in ("PENDING", "RUNNING"), f"{status} before step 100:\n{log[-4000:]}"
        assert time.monotonic() < deadline, log[-4000:]
        time.sleep(0.25)
    subprocess.run([ray, "job", "stop", address, job_id], check=True, capture_output=True, env=ray_head["env"],
                   timeout=120)
    log = logs()
    assert "stopped on request after a final checkpoint (exit code 75)" in log, log[-4000:]
    saved = sorted(p.name for p in ck.iterdir())
    assert len(saved) == 1 and saved[0] in log
