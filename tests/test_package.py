"""A package that works where users install it: a wheel built from this repository, installed into a fresh
virtual environment, runs `disttrain launch demo` from an empty directory (the ready configs ship inside it),
`python -m disttrain` and `--version` work, and `config list/show/keys` answer there too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import disttrain
from tests.launch_helpers import ROOT, clean_env, summary


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding only the wheel; the dependencies (torch, ...) come from this venv's site-packages
    through a .pth file (this checkout's editable install is not among them)."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(root / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("disttrain-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                                str(wheel)], capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    empty = root / "empty"
    empty.mkdir()
    return venv, empty


def _env(venv: Path) -> dict:
    env = clean_env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.slow
def test_the_installed_wheel_runs_a_ready_config_from_an_empty_directory(installed):
    venv, empty = installed
    run = lambda *args: subprocess.run([str(venv / "bin" / "disttrain"), *args], capture_output=True,  # noqa: E731
                                       text=True, cwd=empty, env=_env(venv), timeout=300)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import disttrain; print(disttrain.__file__)"],
                           capture_output=True, text=True, cwd=empty, env=_env(venv)).stdout
    assert str(venv) in where and str(ROOT) not in where  # the wheel's package, not this checkout
    listed = run("config", "list")
    assert listed.returncode == 0 and "demo" in listed.stdout and "bench_kaggle" in listed.stdout
    result = run("launch", "demo", "train.steps=6", "train.log_every=3", "model.max_rows=1000",
                 "data.eval_batches=1", "run.output_dir=out", "run.tensorboard=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary(empty / "out")["steps"] == 6
    version = subprocess.run([str(venv / "bin" / "python"), "-m", "disttrain", "--version"], capture_output=True,
                             text=True, cwd=empty, env=_env(venv))
    assert version.returncode == 0 and version.stdout.strip() == f"disttrain {disttrain.__version__}"
    keys = {entry["key"]: entry for entry in json.loads(run("config", "keys", "--json").stdout)}
    assert keys["train.batch_size"]["default"] == 256 and "global" in keys["train.batch_size"]["meaning"]


def test_the_installed_torch_is_the_tested_one():
    """pyproject.toml states the torch release the suite tests (an exact pin); this environment runs it."""
    import tomllib
    import torch

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("torch")]
    assert pin.startswith("torch==") and torch.__version__.split("+")[0] == pin.removeprefix("torch==")
