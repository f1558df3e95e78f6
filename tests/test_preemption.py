"""Preemption: SIGTERM to the launcher (local, torchrun) leaves no process behind and a final checkpoint from which
`train.resume=auto` ends exactly where the uninterrupted run ends; a loopback job listens on 127.0.0.1 only; the
stop handler's grace and second-signal rules; a hung rank is named when a collective times out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.launch_helpers import assert_same_training, clean_env, disttrain, summary

JOB = ["model.flavor=debug", "train.batch_size=64", "train.steps=600", "train.log_every=20", "train.seed=5",
       "data.eval_batches=2", "run.progress=false", "run.tensorboard=false", "launch.nproc_per_node=2"]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for line in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines():
        if line.strip():
            child, parent = map(int, line.split())
            children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def _listening(pids: list[int]) -> list[str]:
    """Local addresses of the TCP sockets these processes listen on (from /proc/net/tcp and tcp6)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1].split(":")[0])
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


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
    family = _descendants(proc.pid)
    listening = _listening(family)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    log = "".join(lines) + rest
    assert proc.returncode == 75, log[-3000:]
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    assert listening and set(listening) <= loopback, listening  # 127.0.0.1 (or ::1) only
    time.sleep(0.5)
    assert not [pid for pid in family if _alive(pid)], "processes left behind"
    saved = sorted(p.name for p in ck.iterdir())
    assert len(saved) == 1 and "stopped after step" in log and saved[0] in log
    step = int(saved[0].removeprefix("step_"))
    assert 60 <= step < 600
    resumed = disttrain("launch", *JOB, f"launch.launcher={launcher}", f"checkpoint.dir={ck}", "train.resume=auto",
                        f"run.output_dir={tmp_path}/resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"at step {step}" in resumed.stdout
    assert_same_training(summary(tmp_path / "resumed"), uninterrupted)


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


@pytest.mark.slow
def test_a_collective_timeout_names_the_rank_that_stopped_answering(tmp_path):
    result = disttrain("launch", *JOB, "launch.timeout_s=6", f"run.output_dir={tmp_path}/hung",
                       env=clean_env(DISTTRAIN_FAULT="1:45:hang"))  # rank 1 stops answering at step 45
    assert result.returncode == 2, result.stderr[-3000:]
    line = next(line for line in result.stderr.splitlines() if "rank 0" in line and "collective failed" in line)
    assert "launch.timeout_s=6" in line and "not answering: rank(s) 1" in line and "Traceback" not in result.stderr
