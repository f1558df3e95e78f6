"""The Horovod launcher: `horovodrun --gloo -np 2` of the same job, through Horovod's own alltoall and
allreduce, trains exactly like the local launcher. Horovod is built by `make horovod` (CI does)."""

from __future__ import annotations

import pytest

from tests.launch_helpers import PARITY, assert_same_training, clean_env, disttrain, summary


def _have_horovod() -> bool:
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _have_horovod(), reason="Horovod is not installed: `make horovod` builds it (.ci/run does)")
def test_horovodrun_trains_like_the_local_launcher(local_reference, tmp_path):
    result = disttrain("launch", "cluster_configs/horovod.yaml", *PARITY, f"run.output_dir={tmp_path}/hvd",
                       f"checkpoint.dir={tmp_path}/ck", "checkpoint.every_steps=8", "checkpoint.keep_last=0")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    got = summary(tmp_path / "hvd")
    assert got["launcher"] == "horovod" and got["world_size"] == 2
    assert_same_training(got, local_reference)
    workers = got["workers"]
    assert [w["rank"] for w in workers] == [0, 1] and len({w["pid"] for w in workers}) == 2
    assert all(w["cpus"] and w["threads"] == len(w["cpus"]) for w in workers)
    # Checkpoints written through Horovod's collectives resume under another launcher, same result.
    resumed = disttrain("launch", *PARITY, f"train.resume={tmp_path}/ck/step_00000008", f"run.output_dir={tmp_path}/res")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "at step 8" in resumed.stdout
    assert_same_training(summary(tmp_path / "res"), local_reference)


@pytest.mark.slow
@pytest.mark.skipif(not _have_horovod(), reason="Horovod is not installed: `make horovod` builds it (.ci/run does)")
def test_horovodrun_trains_a_model_package_of_ones_own(user_package, tmp_path):
    """Every Horovod worker imports the model by its import path (from the job's directory)."""
    from tests.test_plugins import JOB

    package, local = user_package
    result = disttrain("launch", "horovod", *JOB, f"run.output_dir={tmp_path}/hvd", cwd=package)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    got = summary(tmp_path / "hvd")
    assert got["launcher"] == "horovod" and got["model"] == "mymodels.tower:SPEC"
    assert_same_training(got, local)


def test_missing_horovod_is_one_line(tmp_path):
    """Where Horovod is not importable (hidden here with a sitecustomize), the launch stops before starting."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['horovod'] = None\n")
    env = clean_env(PYTHONPATH=str(site))
    result = disttrain("launch", "cluster_configs/horovod.yaml", f"run.output_dir={tmp_path}/out", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "launch.launcher: horovod needs horovod, which is not installed" in lines[0]
    assert "build_horovod.sh" in lines[0] and "make horovod" in lines[0]
