"""Check before spending, and numbers that stay finite: an oversized table or batch stops in one line before
anything is allocated (and `plan` says so); read-only and full checkpoint directories stop before step 1 or at
the save in one line with the previous checkpoint intact; non-finite config values are refused; a non-finite loss
stops the run (or is skipped and counted); a run without timed steps says so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from disttrain.config import load_config
from disttrain.errors import ConfigError
from tests.launch_helpers import cli, disttrain, summary

SMALL = ["model.flavor=debug", "train.batch_size=64", "run.progress=false", "run.tensorboard=false",
         "data.eval_batches=1"]


@pytest.mark.parametrize(("override", "needs"), [("model.table_sizes=[1000000000000,5]", "embeddings"),
                                                 ("train.batch_size=1000000000000", "activations")])
def test_what_cannot_fit_stops_in_one_line_before_allocating(tmp_path, override, needs):
    result = cli("launch", *SMALL, override, f"run.output_dir={tmp_path}/out")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "does not fit: rank" in line and f"{needs} " in line and "may use" in line, line
    assert not (tmp_path / "out").exists()
    plan = cli("plan", *SMALL, override, "--world-size", "2")
    assert plan.returncode == 0 and "does not fit: rank" in plan.stdout
    fits = json.loads(cli("plan", *SMALL, "--world-size", "2", "--json").stdout)["memory"]
    assert fits["fits"] and fits["verdict"].startswith("memory: fits")
    # A worker started without the launcher's pre-flight (torchrun or Ray by hand) checks too, before allocating.
    worker = disttrain("train", *SMALL, override, f"run.output_dir={tmp_path}/worker")
    assert worker.returncode == 2 and "does not fit: rank 0 needs" in worker.stderr.strip().splitlines()[-1]


def test_the_memory_line_names_what_a_small_rank_needs():
    """A debug model's rank needs kilobytes: the line said `needs 0 MiB ( MiB)`; now every size reads as what it is,
    whatever the mix of parts."""
    from disttrain.planning.resources import MIB, RankNeed, memory_verdict

    small = RankNeed(0, {"embeddings": 3_000, "embedding optimizer": 0, "dense": 5_120, "activations": 300})
    fits, line = memory_verdict([small], 100 * MIB, "MemAvailable")
    assert fits and "rank 0 needs 8 KiB (embeddings 3 KiB, dense 5 KiB, activations 300 B) and may use 100 MiB" \
        in line, line
    for sizes in ([0, 0], [1, 0], [1023, 1], [MIB - 1, 5], [MIB, 0], [MIB // 3] * 3, [100 * MIB, 900 * 1024],
                  [20 * 2**30, 1, 3 * MIB]):
        need = RankNeed(1, dict(zip(("embeddings", "dense", "batches"), sizes)))
        _, line = memory_verdict([need], 64 * MIB, "the cgroup limit")
        assert "()" not in line and "( " not in line and " 0 MiB" not in line.split(" and may use")[0], line
        assert ("(" in line.split(" and may use")[0]) == (need.total > 0), line
    big = RankNeed(2, {"embeddings": 61 * MIB, "dense": 4_000, "activations": 2 * MIB})
    assert memory_verdict([big], 40 * MIB, "x")[1].startswith(
        "does not fit: rank 2 needs 63 MiB (embeddings 61 MiB, activations 2.0 MiB) and may use 40 MiB")


def _mount_tmpfs(path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}): needed for a full or "
                    "read-only file system")


@pytest.fixture
def tmpfs(tmp_path):
    mounts = []

    def mount(name: str, *options: str) -> Path:
        path = tmp_path / name
        _mount_tmpfs(path, *options)
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_checkpoint_or_output_directory_stops_before_step_one(tmp_path, tmpfs):
    readonly = tmpfs("ro", "ro", "size=1m")
    result = cli("launch", *SMALL, f"checkpoint.dir={readonly}/ck", f"run.output_dir={tmp_path}/out")
    assert result.returncode == 2
    assert f"checkpoint.dir: {readonly}/ck is not writable (Read-only file system)" in result.stderr.strip()
    result = cli("launch", *SMALL, f"run.output_dir={readonly}/out")
    assert result.returncode == 2 and "run.output_dir:" in result.stderr and "not writable" in result.stderr
    worker = disttrain("train", *SMALL, f"run.output_dir={readonly}/out")
    assert worker.returncode == 2 and "run.output_dir:" in worker.stderr.strip().splitlines()[-1]


def test_a_full_disk_stops_before_step_one_or_at_the_save_keeping_the_previous_checkpoint(tmp_path, tmpfs):
    disk = tmpfs("full", "size=512k")
    # Too small for even one checkpoint: refused before anything runs.
    tiny = cli("launch", *SMALL, "model.table_sizes=[20000,20000]", f"checkpoint.dir={disk}/ck",
               f"run.output_dir={tmp_path}/tiny")
    assert tiny.returncode == 2 and "MiB free, a checkpoint of this run takes" in tiny.stderr, tiny.stderr
    # Room for a checkpoint: step 10 is saved. Then the disk fills up; the save of step 20 fails in one line,
    # leaves no partial directory and step 10 as it was.
    first = disttrain("launch", *SMALL, "train.steps=10", f"checkpoint.dir={disk}/ck", f"run.output_dir={tmp_path}/a")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.read_bytes() for p in (disk / "ck").rglob("*") if p.is_file()}
    checkpoint = sum(len(b) for b in before.values())
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(free - checkpoint // 2, 0))  # room for half a checkpoint (and the estimate)
    second = disttrain("launch", *SMALL, "train.steps=20", f"checkpoint.dir={disk}/ck", "train.resume=auto",
                       f"run.output_dir={tmp_path}/b")
    assert second.returncode == 2, second.stderr[-2000:]
    line = next(line for line in second.stderr.splitlines() if "checkpoint.dir: writing" in line)
    assert "step_00000020 failed on rank" in line and "MiB free there" in line
    assert "the partial checkpoint was removed, step_00000010 is intact" in line
    assert sorted(p.name for p in (disk / "ck").iterdir()) == ["step_00000010"]
    assert before == {p: p.read_bytes() for p in (disk / "ck").rglob("*") if p.is_file()}


@pytest.mark.parametrize("text", ["train:\n  lr: .nan\n", "train:\n  lr: .inf\n", "train:\n  target_auc: -.inf\n"])
def test_non_finite_config_values_are_refused_wherever_they_come_from(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"got (nan|inf|-inf), expected a finite number"):
        load_config(path)
    key, value = text.split()[1].rstrip(":"), text.split()[2]
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(None, [f"train.{key}={value}"])


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_or_is_skipped_and_counted(tmp_path):
    diverging = [*SMALL, "train.lr=1.0e+30", "train.steps=20", "checkpoint.every_steps=1"]
    stopped = disttrain("launch", *diverging, f"checkpoint.dir={tmp_path}/ck", f"run.output_dir={tmp_path}/stop")
    assert stopped.returncode == 2
    line = next(line for line in stopped.stderr.splitlines() if "rank 0" in line)
    assert "the train loss went non-finite at step 2 on rank" in line and "last checkpoint is the last good one" in line
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_00000001"]  # nothing saved after it
    skipped = disttrain("launch", *diverging, "train.nonfinite_loss=skip", f"run.output_dir={tmp_path}/skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    run = summary(tmp_path / "skip")
    assert run["skipped_steps"] > 0 and run["steps"] == 20
    assert "step skipped (train.nonfinite_loss=skip)" in skipped.stdout


def test_a_benchmark_without_timed_steps_is_refused_and_a_run_says_it_has_none(tmp_path):
    result = cli("bench", "train.steps=10", f"run.output_dir={tmp_path}/bench")
    assert result.returncode == 2
    assert "train.steps: got 10 with train.warmup_steps=20; expected more steps than that" in result.stderr


def test_a_resumed_runs_timeline_goes_forward():
    from disttrain.report import _training_time

    history = [{"time_s": 1.0}, {"time_s": 2.0}, {"time_s": 0.5}, {"time_s": 1.5}, {"step": 4}]
    assert _training_time(history) == [1.0, 2.0, 2.0, 3.0, 3.0]


def test_a_relative_output_dir_under_ray_job_submit_is_refused(monkeypatch):
    from disttrain.launchers.ray_cluster import JOB_DRIVER, _resolved_output_dir

    cfg = load_config(None, ["run.output_dir=runs/x"])
    assert Path(_resolved_output_dir(cfg)).is_absolute()  # not under a Ray job: resolved here
    monkeypatch.setenv(JOB_DRIVER, "{}")
    with pytest.raises(ConfigError, match="run.output_dir: got 'runs/x', a relative path"):
        _resolved_output_dir(cfg)
    cfg = load_config(None, ["run.output_dir=~/runs/x"])
    assert _resolved_output_dir(cfg) == str(Path("~/runs/x").expanduser())
    cfg = load_config(None, ["run.output_dir=s3://bucket/runs/x"])  # object storage: the URL as it is
    assert _resolved_output_dir(cfg) == "s3://bucket/runs/x"
