from __future__ import annotations

import json
import sys

import pytest
import yaml

import disttrain
from disttrain.config import Config, load_config, to_dict, to_flat_dict, to_yaml
from disttrain.errors import ConfigError
from tests.launch_helpers import ROOT, cli


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
        (["model.name=two_tower"], r"model.name: got 'two_tower', expected one of dlrm, dlrm_dcnv2, wide_deep, deepfm, dien, or package.module:attribute"),
        (["model.flavor=intel"], r"model.flavor: got 'intel', expected one of debug, kaggle, mlperf for model.name=dlrm"),
        (["data.source=dien"], r"data.source: got 'dien' with model.name=dlrm; expected synthetic or criteo"),
        (["model.name=dien", "data.source=criteo"], r"data.source: got 'criteo' with model.name=dien; expected synthetic or dien"),
        (["data.source=criteo"], r"data.path: empty with data.source=criteo; expected the directory written by"),
        (["train.epochs=2"], r"train.epochs: got 2.0, but data.source=synthetic has no epochs; expected train.steps \(or data.source=criteo or prepared or torchrec\)"),
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


# --- the schema, the ready configs, the `config` verb ----------------------------------------------------------


def test_the_readme_table_is_the_schema():
    from disttrain.config_schema import keys, markdown_rows

    page = (ROOT / "docs" / "configuration.md").read_text()
    start = page.index("| key | default | meaning |")
    table = page[start:page.index("<!-- config-keys: end -->", start)].strip().splitlines()
    assert table == markdown_rows(), (
        "docs/configuration.md's table differs: paste `disttrain config keys --markdown` over it")
    assert [k.path for k in keys()] == list(to_flat_dict(Config()))
    assert all(k.help.strip() for k in keys())


def test_every_accepted_value_is_named_in_its_keys_meaning():
    """A key with a fixed set of values names each (or shows it as the default) in `config keys` and the README:
    `sharding.strategy` once forgot `table_row_wise`."""
    from disttrain.config import CHOICES
    from disttrain.config_schema import keys

    described = {k.path: k for k in keys()}
    for path, values in CHOICES.items():
        unnamed = [v for v in values if f"`{v}`" not in described[path].help and v != described[path].default]
        assert not unnamed, f"{path}: {unnamed} missing from {described[path].help!r}"


def test_config_keys_show_and_list_from_the_cli():
    listed = json.loads(cli("config", "keys", "--json").stdout)
    batch = next(e for e in listed if e["key"] == "train.batch_size")
    assert batch["default"] == 256 and "global" in batch["meaning"]
    assert len(listed) == len(to_flat_dict(Config())) and all(set(e) == {"key", "default", "meaning"} for e in listed)
    shown = cli("config", "show", "demo", "train.steps=7")
    assert shown.returncode == 0 and yaml.safe_load(shown.stdout)["train"] == {
        **yaml.safe_load(shown.stdout)["train"], "steps": 7, "batch_size": 2048}
    ready = json.loads(cli("config", "list", "--json").stdout)
    assert sorted(ready) == sorted(p.stem for p in (ROOT / "cluster_configs").glob("*.yaml"))
    assert "sharded over 2 local ranks" in ready["demo"]
    assert cli("--version").stdout.strip() == f"disttrain {disttrain.__version__}"


def test_ready_configs_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: no cluster_configs/ here
    from_file = to_dict(load_config(ROOT / "cluster_configs" / "demo.yaml"))
    assert to_dict(load_config("demo")) == from_file
    assert to_dict(load_config("cluster_configs/demo.yaml")) == from_file  # the README's spelling, found anyway
    (tmp_path / "demo.yaml").write_text("train:\n  steps: 3\n")
    assert load_config("demo.yaml").train.steps == 3  # a file of the user's wins over the ready config
    with pytest.raises(ConfigError, match=r"^dmeo: config file not found; expected a YAML file or a ready config "
                                          r"\(bench_kaggle, .*demo"):
        load_config("dmeo")


def test_a_stored_config_never_imports_the_code_it_names():
    from disttrain.config import stored_config

    text = to_yaml(load_config(None, ["model.name=evil.module:SPEC"]))
    with pytest.raises(ConfigError, match=r"^ck/meta.json: model.name is 'evil.module:SPEC', code that disttrain "
                                          r"does not import from a file it reads; pass model.name=evil.module:SPEC"):
        stored_config(text, ["data.eval_batches=2"], source="ck/meta.json")
    assert stored_config(text, ["model.name=evil.module:SPEC"], source="ck").model.name == "evil.module:SPEC"
    assert "evil" not in sys.modules


def test_a_missing_optional_dependency_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    out = cli("infer", "--checkpoint", str(tmp_path / "model.onnx"), "--mode", "accuracy", "--runtime", "onnxruntime")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "needs onnxruntime, which is not installed in" in out.stderr
    assert out.stderr.rstrip().endswith("expected `pip install 'disttrain[onnx]'`")
