from __future__ import annotations

import pytest

from disttrain.config import load_config, to_yaml
from disttrain.errors import ConfigError


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg.model.name == "dlrm" and cfg.train.batch_size == 256 and cfg.launch.launcher == "local"


def test_dotted_overrides_with_lists_and_mappings():
    cfg = load_config(None, ["train.batch_size=4096", "model.table_sizes=[7,1001,13]", "train.lr=1",
                             "sharding.tables={t0: row_wise}"])
    assert cfg.train.batch_size == 4096
    assert cfg.model.table_sizes == [7, 1001, 13]
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.sharding.tables == {"t0": "row_wise"}


def test_yaml_12_booleans_keep_on_off_as_strings():
    cfg = load_config(None, ["launch.allocator=off", "run.progress=false"])
    assert cfg.launch.allocator == "off" and cfg.run.progress is False


def test_partial_file_keeps_other_defaults(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("launch:\n  nproc_per_node: 3\n")
    cfg = load_config(path, ["launch.nnodes=2"])
    assert cfg.launch.nproc_per_node == 3 and cfg.launch.nnodes == 2 and cfg.train.steps == 100


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["model.table_sizes=[3,4]", "sharding.tables={t1: column_wise}"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batchsize=4"], r"train.batchsize: unknown key \(known keys here: batch_size"),
        (["trian.steps=4"], r"trian: unknown key"),
        (["train.batch_size=big"], r"train.batch_size: got 'big' \(str\), expected int"),
        (["train.batch_size=1.5"], r"train.batch_size: got 1.5 \(float\), expected int"),
        (["train.steps=true"], r"train.steps: got True, expected int"),
        (["model.table_sizes=5"], r"model.table_sizes: got 5, expected a list of int"),
        (["model.table_sizes=[5,x]"], r"model.table_sizes\[1\]: got 'x' \(str\), expected int"),
        (["sharding.strategy=diagonal"], r"sharding.strategy: got 'diagonal', expected one of auto, table_wise"),
        (["sharding.tables={t0: diagonal}"], r"sharding.tables.t0: got 'diagonal', expected one of table_wise"),
        (["train.optimizer=lamb"], r"train.optimizer: got 'lamb', expected one of sgd, adagrad, rowwise_adagrad, adam"),
        (["train.batch_size=0"], r"train.batch_size: got 0, expected a positive integer"),
        (["model.table_sizes=[4,0]"], r"model.table_sizes\[1\]: got 0, expected a positive number of rows"),
        (["train"], r"override 'train': expected KEY=VALUE"),
        (["train=3"], r"train: got 3, expected a section"),
        # Names that live in registries, checked against them (disttrain.launch.load_checked, as the CLI loads).
        (["model.name=two_tower"], r"model.name: got 'two_tower', expected one of dlrm, wide_deep, deepfm, dien"),
        (["model.flavor=intel"], r"model.flavor: got 'intel', expected one of debug, kaggle, mlperf for model.name=dlrm"),
        (["data.source=dien"], r"data.source: got 'dien' with model.name=dlrm; expected synthetic or criteo"),
        (["model.name=dien", "data.source=criteo"], r"data.source: got 'criteo' with model.name=dien; expected synthetic or dien"),
        (["data.source=criteo"], r"data.path: empty with data.source=criteo; expected the directory written by"),
        (["train.epochs=2"], r"train.epochs: got 2.0, but data.source=synthetic has no epochs; expected train.steps \(or data.source=criteo\)"),
        (["launch.launcher=slurm"], r"launch.launcher: got 'slurm', expected one of local, torchrun, ray, horovod"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    from disttrain.launch import load_checked

    with pytest.raises(ConfigError, match=message):
        load_checked(None, overrides)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  schedule:\n    warmup: 3\n")
    with pytest.raises(ConfigError, match=r"train.schedule: unknown key"):
        load_config(nested)
