"""Session fixtures: the runs several modules read, trained once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.launch_helpers import PARITY, disttrain, run_example, summary

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


# A model package of one's own, outside the repository: a tiny two-tower model, a data source, and the
# dist-info of an "installed" distribution that names the model as a `disttrain.models` entry point.
USER_MODEL = """
from dataclasses import dataclass

import torch
from torch import nn

from disttrain.layers import EmbeddingBagCollection
from disttrain.models.spec import CTR_SOURCES, ModelSpec
from disttrain.tables import EmbeddingTableSpec


@dataclass(frozen=True)
class Flavor:
    dim: int
    rows: tuple


class TinyTower(nn.Module):
    def __init__(self, cfg, embedding_device="cpu"):
        super().__init__()
        rows = FLAVORS[cfg.model.flavor].rows
        self.tables = [EmbeddingTableSpec(name, r, 4) for name, r in zip(("user_id", "item_id", "item_tag"), rows)]
        self.embeddings = EmbeddingBagCollection(self.tables, seed=cfg.train.seed, device=embedding_device)
        self.user = nn.Linear(cfg.data.num_dense + 4, 4)
        self.item = nn.Linear(8, 4)

    def forward(self, dense, sparse):
        user_id, item_id, item_tag = (p.flatten(1) for p in self.embeddings(sparse))
        user = self.user(torch.cat([dense, user_id], dim=1))
        item = self.item(torch.cat([item_id, item_tag], dim=1))
        return (user * item).sum(dim=1)


FLAVORS = {"debug": Flavor(4, (40, 61, 7))}
SPEC = ModelSpec(name="tiny_tower", flavors=FLAVORS, build=lambda cfg, embedding_device="cpu": TinyTower(
    cfg, embedding_device), data_sources=CTR_SOURCES, onnx=False)
NO_TABLES = ModelSpec(name="no_tables", flavors=FLAVORS, build=lambda cfg, embedding_device="cpu": nn.Linear(2, 1),
                      data_sources=CTR_SOURCES)
broken = 5
"""
USER_SOURCE = """
from disttrain.data.contract import SourceSpec
from disttrain.data.synthetic import SyntheticCTR


class Shifted(SyntheticCTR):
    def position(self, step):
        return {**super().position(step), "source": "mymodels.data"}


SPEC = SourceSpec("mymodels.data", epochs=False, open=lambda cfg, tables, comm, rank: Shifted(
    tables, num_dense=cfg.data.num_dense, global_batch=cfg.train.batch_size, seed=cfg.train.seed + 1))
"""


@pytest.fixture(scope="session")
def user_package(tmp_path_factory):
    """(the package's directory, the summary of its 2-rank local run with a checkpoint in <dir>/ck)."""
    from tests.test_plugins import JOB

    root = tmp_path_factory.mktemp("user-package")
    (root / "mymodels").mkdir()
    (root / "mymodels" / "__init__.py").write_text("")
    (root / "mymodels" / "tower.py").write_text(USER_MODEL)
    (root / "mymodels" / "data.py").write_text(USER_SOURCE)
    info = root / "tiny_tower_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-tower-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[disttrain.models]\ntiny_tower = mymodels.tower:SPEC\n")
    result = disttrain("launch", *JOB, "launch.nproc_per_node=2", f"checkpoint.dir={root}/ck",
                       f"run.output_dir={root}/run", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, summary(root / "run")


class _ExampleRuns:
    """One example's {"single": one process, "local": 2 ranks} summaries, each run on first use: test_ray.py reads
    only "local", and under `-n 2 --dist loadfile` it and test_examples.py often run in different processes."""

    def __init__(self, name: str, root: Path):
        self.name, self.root, self.done = name, root, {}

    def __getitem__(self, kind: str) -> dict:
        if kind not in self.done:
            extra = {"single": {"command": "train"}, "local": {}}[kind]
            self.done[kind] = run_example(self.name, self.root / kind, **extra)
        return self.done[kind]


@pytest.fixture(scope="session")
def example_runs(tmp_path_factory):
    """`example_runs(name)["single"|"local"]`: the summary of examples/<name> on one process or 2 ranks, each run
    once, when first read."""
    done: dict[str, _ExampleRuns] = {}

    def get(name: str) -> _ExampleRuns:
        if name not in done:
            done[name] = _ExampleRuns(name, tmp_path_factory.mktemp(f"example-{name}"))
        return done[name]

    return get
