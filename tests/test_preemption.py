"""Preemption: SIGTERM to the launcher (local, torchrun) leaves no process behind and a final checkpoint from which
`train.resume=auto` ends exactly where the uninterrupted run ends; SIGKILL to the launcher (local, torchrun,
Horovod) leaves no process behind either, and a loopback job listens on 127.0.0.1 only under each; the stop
handler's grace and second-signal rules; a hung rank is named when a collective times out."""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.launch_helpers import assert_same_training, clean_env, disttrain, summary

JOB = ["model.flavor=debug", "train.batch_size=64", "train.steps=600", "train.log_every=20", "train.seed=5",
       "data.eval_batches=2", "run.progress=false", "run.tensorboard=false", "launch.nproc_per_node=2"]


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _family(pid: int) -> dict[psutil.Process, str]:
    """The process and every process it started, with their command lines (a psutil handle tells a process
    from a later one that reuses its pid)."""
    parent = psutil.Process(pid)
    family = {}
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            family[proc] = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
    return family


def _listening(family) -> list[str]:
    """Local addresses of the TCP sockets these processes listen on."""
    pids = {proc.pid for proc in family}
    return [conn.laddr.ip for conn in psutil.net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids]


def _left(family) -> list[psutil.Process]:
    """Those still running (not zombies)."""
    left = []
    for proc in family:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            continue
    return left


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    result = disttrain("launch", *JOB, f"run.output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    return summary(out)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "torchrun"])
def test_sigterm_saves_a_final_checkpoint_and_resume_auto_ends_like_the_uninterrupted_run(tmp_path, launcher,
                                                                                         uninterrupted):
    ck = tmp_path / "ck"
    args = [sys.executable, "-m", "disttrain.cli", "launch", *JOB, f"launch.launcher={launcher}",
            f"checkpoint.dir={ck}", f"run.output_dir={tmp_path}/stopped"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    lines = []
    for line in proc.stdout:  # wait until training runs (a few interval lines), then preempt
        lines.append(line)
        if line.startswith("step     60"):
            break
    family = _family(proc.pid)
    listening = _listening(family)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    log = "".join(lines) + rest
    assert proc.returncode == 75, log[-3000:]
    assert listening and set(listening) <= LOOPBACK, listening
    time.sleep(0.5)
    assert not _left(family), "processes left behind"
    saved = sorted(p.name for p in ck.iterdir())
    assert len(saved) == 1 and "stopped after step" in log and saved[0] in log
    step = int(saved[0].removeprefix("step_"))
    assert 60 <= step < 600
    resumed = disttrain("launch", *JOB, f"launch.launcher={launcher}", f"checkpoint.dir={ck}", "train.resume=auto",
                        f"run.output_dir={tmp_path}/resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {step}" in resumed.stdout
    assert_same_training(summary(tmp_path / "resumed"), uninterrupted)


# Trains far longer than the test waits; killed after its first interval line ("[0]<stdout>:step ..." under
# horovodrun, which prefixes its workers' lines).
ENDLESS = [*JOB, "train.steps=1000000", "train.log_every=5"]
TRAINING = re.compile(r"step +\d+ +loss")
HOROVOD = pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                             reason="Horovod is not installed: `make horovod` builds it (.ci/run does)")


def _start_and_wait_for_training(args: list[str], timeout_s: float) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    lines: list[str] = []
    training = threading.Event()

    def read() -> None:  # until every holder of the pipe is gone: the launcher and anything left behind
        for line in proc.stdout:
            lines.append(line)
            if TRAINING.search(line):
                training.set()

    threading.Thread(target=read, daemon=True).start()
    if not training.wait(timeout_s):
        proc.kill()
        raise AssertionError(f"no training step within {timeout_s} s:\n" + "".join(lines)[-3000:])
    return proc, lines


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "torchrun", pytest.param("horovod", marks=HOROVOD)])
def test_sigkill_to_the_launcher_leaves_no_process_and_the_job_listened_on_loopback_only(tmp_path, launcher):
    """No layer outlives a launcher that dies without a word (the OOM killer, `kill -9`): torchrun's agent,
    horovodrun, its middlemen and shells, and every worker are gone within 20 s."""
    args = [sys.executable, "-m", "disttrain.cli", "launch", *ENDLESS, f"launch.launcher={launcher}",
            f"run.output_dir={tmp_path}"]
    proc, lines = _start_and_wait_for_training(args, timeout_s=240)
    family = _family(proc.pid)
    try:
        listening = _listening(family)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while _left(family) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [f"{p.pid} {family[p][:150]}" for p in _left(family)]
        assert not left, "left behind 20 s after the launcher was SIGKILLed:\n" + "\n".join(left)
        assert listening and set(listening) <= LOOPBACK, listening
    finally:
        for stray in _left(family):
            stray.kill()


STOPPABLE = """
import sys, time
from disttrain.runtime.signals import StopSignals
stops = StopSignals(grace_s=float(sys.argv[1])).install()
print("ready", flush=True)
deadline = time.time() + 20
while time.time() < deadline and not (stops.requested and sys.argv[2] == "leave"):
    time.sleep(0.01)
print("left by itself", stops.requested, flush=True)
"""


def _stoppable(grace: float, leave: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE, str(grace), leave], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env())
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_second_signal_stops_at_once_and_the_grace_period_bounds_the_wait():
    # Two signals close together are one request (a scheduler and the launcher sending the same): the
    # process goes on and leaves in order.
    proc = _stoppable(30, "leave")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "left by itself 15" in out
    # A second signal later: at once, 128 + its number.
    proc = _stoppable(30, "stay")
    proc.send_signal(signal.SIGINT)
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    # No second signal, but no end within the grace period: out anyway.
    proc = _stoppable(1, "stay")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 128 + signal.SIGTERM
    assert "no final checkpoint within launch.stop_grace_s=1 s" in proc.stderr.read()


PARENT = """
import subprocess, time
from disttrain.runtime.signals import dies_with_this_process
child = subprocess.Popen(["sleep", "60"], preexec_fn=dies_with_this_process())
print(child.pid, flush=True)
time.sleep(60)
"""
TOO_LATE = "from disttrain.runtime.signals import die_with_parent; die_with_parent(parent=0); print('not reached')"


def test_the_death_signal_ends_a_child_with_its_parent_and_one_whose_parent_is_already_gone():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=clean_env())
    child = {psutil.Process(int(parent.stdout.readline())): "sleep 60"}
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _left(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _left(child)
    # A process whose parent is not the one that started it (that one died before the request took effect).
    late = subprocess.run([sys.executable, "-c", TOO_LATE], capture_output=True, text=True, env=clean_env())
    assert late.returncode == -signal.SIGTERM and "not reached" not in late.stdout


@pytest.mark.slow
def test_a_collective_timeout_names_the_rank_that_stopped_answering(tmp_path):
    result = disttrain("launch", *JOB, "launch.timeout_s=6", f"run.output_dir={tmp_path}/hung",
                       env=clean_env(DISTTRAIN_FAULT="1:45:hang"))  # rank 1 stops answering at step 45
    assert result.returncode == 2, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if "rank 0" in line and "collective failed" in line)
    assert "launch.timeout_s=6" in line and "not answering: rank(s) 1" in line and "Traceback" not in result.stderr
