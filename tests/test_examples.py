"""The examples of models of one's own (`examples/`), run as docs/models.md says: each trains sharded on 2 ranks
exactly like one process, under the local launcher and torchrun. (Under `ray job submit`: tests/test_ray.py.)"""

from __future__ import annotations

import pytest

from tests.launch_helpers import EXAMPLES, assert_same_training, run_example


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_trains_sharded_like_one_process(name, example_runs, tmp_path):
    single, local = example_runs(name)["single"], example_runs(name)["local"]
    torchrun = run_example(name, tmp_path / "torchrun", "launch.launcher=torchrun")
    assert single["world_size"] == 1 and local["world_size"] == 2 and local["model"] == f"examples.{name}.model:SPEC"
    assert abs(local["train_loss"] - single["train_loss"]) < 1e-5, (local["train_loss"], single["train_loss"])
    assert abs(local["eval_auc"] - single["eval_auc"]) < 1e-4
    assert_same_training(torchrun, local)
    assert local["eval_auc"] > 0.5  # it learns the planted signal
