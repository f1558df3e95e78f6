"""Session fixtures: the runs several modules read, trained once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.launch_helpers import PARITY, disttrain, summary

# One checkpoint per model, from a real 2-rank row-wise run; the inference, ONNX, int8, export and checkpoint
# tests all read these (copies where they damage one).
TRAINED = {
    "dlrm": ["train.steps=60", "train.batch_size=128", "train.optimizer=adagrad", "data.multi_hot_max=2"],
    "wide_deep": ["train.steps=60", "train.batch_size=128", "train.optimizer=adagrad"],
    "deepfm": ["train.steps=60", "train.batch_size=128", "train.optimizer=adagrad"],
    "dien": ["train.steps=20", "train.batch_size=64", "data.synthetic_samples=3000", "train.optimizer=adam",
             "train.lr=0.003"],
}


@dataclass(frozen=True)
class Trained:
    model: str
    out: Path  # run.output_dir
    ck: Path  # checkpoint.dir (its newest checkpoint: `step`)
    run: dict  # summary.json

    @property
    def step_dir(self) -> Path:
        return self.ck / f"step_{self.run['steps']:08d}"


@pytest.fixture(scope="session")
def local_reference(tmp_path_factory) -> dict:
    """The parity job under the local launcher: what every other launcher must reproduce."""
    out = tmp_path_factory.mktemp("local-reference")
    result = disttrain("launch", *PARITY, f"run.output_dir={out}")
    assert result.returncode == 0, result.stderr
    return summary(out) | {"_stdout": result.stdout}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """`trained(model)`: that model's session checkpoint (trained on first use)."""
    done: dict[str, Trained] = {}

    def get(model: str) -> Trained:
        if model not in done:
            root = tmp_path_factory.mktemp(f"trained-{model}")
            result = disttrain("launch", f"model.name={model}", *TRAINED[model], "launch.nproc_per_node=2",
                               "sharding.strategy=row_wise", "run.progress=false", "run.tensorboard=false",
                               f"run.output_dir={root}", f"checkpoint.dir={root}/ck")
            assert result.returncode == 0, result.stderr[-3000:]
            done[model] = Trained(model, root, root / "ck", summary(root))
        return done[model]

    return get
