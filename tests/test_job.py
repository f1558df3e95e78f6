"""What a worker is asked to do is data it reads, not the environment it inherits: the driver resolves the job
once (`disttrain.runtime.job.Job`), writes it beside the config, and hands both to the workers by name; a launch
leaves this process's environment as it found it, so a second launch in the same process decides afresh; and no
module outside `disttrain/runtime/` and `disttrain/launchers/` reads the environment."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from disttrain import api
from disttrain.config import load_config
from disttrain.launch import resolve_job
from disttrain.launchers.torchrun import torchrun_command
from disttrain.runtime.job import TRAIN, Job, job_path, read_job, worker_arguments

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.flavor=debug", "train.batch_size=64", "run.progress=false", "run.tensorboard=false",
         "data.eval_batches=1", "launch.nproc_per_node=1", "launch.affinity=none"]
# Where reading this process's environment belongs: the torchrun variables, the launchers' own (`launchers/` is
# installed as `disttrain.launchers`, `models/` as `disttrain.models`).
ENVIRONMENT_ROOMS = ("disttrain/runtime/", "disttrain/launchers/", "launchers/")
PACKAGE = sorted({p.resolve() for d in ("disttrain", "models") for p in (ROOT / d).rglob("*.py")})


def test_a_job_round_trips_and_refuses_what_it_cannot_mean():
    job = Job(task="serve", serve={"mode": "latency", "iterations": 3, "exact_max_length": 0},
              resources_checked=True, verified_checkpoint="/ck/step_4", verified_data="/data")
    assert Job.from_json(json.loads(json.dumps(job.to_json()))) == job
    assert read_job(None) == TRAIN == Job()
    with pytest.raises(ValueError, match="task"):
        Job(task="dance")
    with pytest.raises(ValueError, match="serve"):
        Job(task="serve")
    with pytest.raises(ValueError, match="unknown"):
        Job.from_json({"task": "train", "probe": True})


def test_preparing_a_launch_writes_the_job_beside_the_config_and_leaves_the_environment(tmp_path):
    before = dict(os.environ)
    for task, serve in (("train", None), ("serve", {"mode": "throughput", "iterations": 2, "exact_max_length": 0}),
                        ("probe", None)):
        cfg = load_config(None, [*SMALL, f"run.output_dir={tmp_path}/{task}"])
        _, config_path = resolve_job(cfg, task=task, serve=serve)
        job = read_job(job_path(config_path))
        assert job == Job(task=task, serve=serve, resources_checked=True)
        assert dict(os.environ) == before
    assert worker_arguments(config_path) == ["--config", config_path, "--job", str(job_path(config_path))]
    command = torchrun_command(cfg, config_path)
    assert command[-4:] == ["--config", config_path, "--job", str(job_path(config_path))]
    assert worker_arguments(str(tmp_path / "elsewhere.yaml")) == ["--config", str(tmp_path / "elsewhere.yaml")]


def test_two_launches_in_one_process_decide_afresh_and_leave_the_environment(tmp_path):
    """The second launch resumes the first one's checkpoint, which its pre-flight hashes once (the workers then
    check sizes only); nothing of either launch stays in this process's environment."""
    before = dict(os.environ)
    first = load_config(None, [*SMALL, "train.steps=4", "checkpoint.every_steps=4", f"checkpoint.dir={tmp_path}/ck",
                               f"run.output_dir={tmp_path}/a"])
    assert api.launch(first)["steps"] == 4
    assert dict(os.environ) == before
    second = load_config(None, [*SMALL, "train.steps=6", "train.resume=auto", f"checkpoint.dir={tmp_path}/ck",
                                f"run.output_dir={tmp_path}/b"])
    assert api.launch(second)["steps"] == 6
    assert dict(os.environ) == before
    assert read_job(tmp_path / "a" / "job.json") == Job(resources_checked=True)
    resumed = read_job(tmp_path / "b" / "job.json")
    assert resumed.verified_checkpoint.startswith(str((tmp_path / "ck").resolve()))


def _environment_reads(path: Path) -> list[int]:
    """Lines of `path` that touch this process's environment: os.environ, os.getenv/putenv/unsetenv, or a name
    imported from os for it."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os"
                and node.attr in ("environ", "environb", "getenv", "putenv", "unsetenv")):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(
                a.name in ("environ", "environb", "getenv", "putenv", "unsetenv") for a in node.names):
            lines.append(node.lineno)
    return lines


def test_only_the_runtime_and_the_launchers_read_the_environment():
    assert any(p.parent.name == "models" for p in PACKAGE)
    found = [f"{p.relative_to(ROOT)}:{n}" for p in PACKAGE
             if not str(p.relative_to(ROOT)).startswith(ENVIRONMENT_ROOMS) for n in _environment_reads(p)]
    assert not found, ("read through disttrain.runtime (the torchrun variables) or the job record "
                       "(disttrain.runtime.job) instead:\n" + "\n".join(found))


def test_the_environment_check_sees_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom os import getenv\nx = os.environ.get('A')\nos.environ['B'] = '1'\n")
    assert sorted(_environment_reads(sample)) == [2, 3, 4]


def test_the_config_is_checked_once_then_frozen_and_the_callers_stays_as_it_was(tmp_path, monkeypatch):
    """The driver checks a config against the registries once (the result goes with the config and its copies,
    for the values it was checked for), resolves a copy, and freezes it: a change then is an error naming the
    key; the caller's config is neither resolved nor frozen. A worker in this process does the same with its
    own copy: one check, then a frozen config through the whole run."""
    import copy

    from disttrain.config_schema import FrozenConfigError
    from disttrain.launch import load_checked
    from disttrain.planning import build

    calls = []
    real = build._check
    monkeypatch.setattr(build, "_check", lambda cfg: calls.append(cfg.model.name) or real(cfg))
    cfg = load_checked(None, [*SMALL, "launch.backend=auto", "launch.nproc_per_node=auto",
                              f"run.output_dir={tmp_path}/a"])
    given = copy.deepcopy(cfg)
    resolved, path = resolve_job(cfg)
    assert calls == ["dlrm"]  # load_checked's check served the pre-flight's plan, data and resources too
    assert cfg == given and not cfg.frozen  # the caller's: as it was
    assert resolved.frozen and resolved.launch.backend == "gloo" and resolved.launch.nproc_per_node >= 1
    assert load_config(path, []) == resolved  # what the workers read is the frozen config
    resolved.train.steps = resolved.train.steps  # the value it holds: allowed (resolving steps are idempotent)
    with pytest.raises(FrozenConfigError, match=r"config key train\.steps: .*frozen.*holds 100, not 5"):
        resolved.train.steps = 5
    thawed = copy.deepcopy(resolved)
    thawed.train.steps = 5  # a copy is the caller's to change ...
    assert not thawed.frozen and resolved.train.steps == 100
    thawed.model.name = "wide_deep"
    build.check_config(thawed)  # ... and is checked anew when a checked value changed
    assert calls == ["dlrm", "wide_deep"]

    calls.clear()
    seen = []
    real_trainer_init = __import__("disttrain.engine.trainer", fromlist=["Trainer"]).Trainer.__init__

    def trainer_init(self, cfg, *args, **kwargs):
        seen.append(cfg.frozen)
        real_trainer_init(self, cfg, *args, **kwargs)

    monkeypatch.setattr("disttrain.engine.trainer.Trainer.__init__", trainer_init)
    mine = load_config(None, [*SMALL, "train.steps=2", f"run.output_dir={tmp_path}/b"])
    summary = api.train(mine)
    assert summary["steps"] == 2 and seen == [True] and calls == ["dlrm"]
    assert not mine.frozen and mine.launch.backend == "auto"
