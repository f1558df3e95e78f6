"""Issue 31, reliability: hostile or extreme input ends in one line or a correct result, never a traceback, a hang
or script running in a browser. A report of a summary.json full of markup, FNV-1a of long values, a full disk
under `data prepare`, ports out of range, a million tables, a dynamic table past its capacity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from disttrain.config import load_config
from disttrain.errors import ConfigError, DataError
from disttrain.prepare.hashing import LOCKSTEP_MAX, fnv1a64, hash_values
from disttrain.sharding.dynamic_table import DynamicShard
from disttrain.tables import NUM_BUCKETS, bucket_of
from tests.launch_helpers import cli

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '" onerror="alert(2)" x="'
IMAGE = "<img src=x onerror=alert(3)>"


# ----- 1. the report escapes what it shows ------------------------------------------------------------------------


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text of every <script>."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if tag == "script":
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def _hostile_run(root: Path) -> Path:
    """A run directory whose every text field (and its own name) carries markup."""
    run = root / f"run{IMAGE}"
    run.mkdir()
    phases = {name: {"min": 1.0, "median": 2.0, "max": 3.0} for name in
              ("data_wait", "embedding_lookup", "dynamic_ids", "all_to_all", "dense_forward", "dense_backward",
               "all_reduce", "optimizer")}
    summary = {
        "model": SCRIPT, "flavor": ATTRIBUTE, "launcher": IMAGE, "precision": SCRIPT, "world_size": 1, "steps": 2,
        "global_batch_size": 8, "samples_per_s": 10.0, "eval_auc": 0.5,
        "history": [{"step": 1, "loss": 0.7, "train_auc": 0.5, "samples_per_s": 9.0, "time_s": 1.0,
                     "rank_step_ms": [5.0]}],
        "breakdown": {"phases": phases, "step_ms": {"min": 4.0, "median": 5.0, "max": 6.0}, "slowest_rank": SCRIPT,
                      "per_rank": [{"rank": 0, "step_ms": 5.0, "phases": {"data_wait": 1.0}}]},
        "plan": {"tables": [{"name": SCRIPT, "type": ATTRIBUTE, "rows": IMAGE, "dim": 4, "ranks": [SCRIPT]}],
                 "ranks": [{"rank": ATTRIBUTE, "bytes": 1024, "weight_bytes": SCRIPT, "optimizer_bytes": 0,
                            "num_shards": IMAGE}]},
        "workers": [{"rank": 0, "host": ATTRIBUTE, "pid": SCRIPT, "cpus": [0], "numa_node": IMAGE, "threads": 1,
                     "allocator": SCRIPT, "device": IMAGE, "max_rss_mib": SCRIPT}],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(f"model:\n  name: '{SCRIPT}'\nrun:\n  name: '{ATTRIBUTE}'\n")
    return run


def test_report_shows_markup_of_a_summary_as_text(tmp_path):
    run = _hostile_run(tmp_path)
    result = cli("report", str(run), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    parsed = _Elements()
    parsed.feed(page)
    assert len(parsed.scripts) == 1 and "data-images-ok" in parsed.scripts[0]  # the page's own, only
    assert "alert" not in parsed.scripts[0]
    handlers = [(tag, name) for tag, attrs in parsed.tags for name in attrs if name.startswith("on")]
    assert handlers == []
    images = [attrs.get("src", "") for tag, attrs in parsed.tags if tag == "img"]
    assert all(src.startswith("data:image/png;base64,") for src in images), images
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(3)&gt;" in page
    assert "&quot; onerror=&quot;alert(2)&quot;" in page


# ----- 2. FNV-1a 64 of long values --------------------------------------------------------------------------------


def _reference_fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _hash_all(values: list[bytes]) -> list[int]:
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
    return fnv1a64(offsets, np.frombuffer(b"".join(values), dtype=np.uint8)).tolist()


def test_fnv1a64_of_short_long_and_unicode_values_is_the_per_byte_one():
    rng = np.random.default_rng(31)
    values = [b"", b"a", "é€😀 ünïcödé".encode(), b"x" * LOCKSTEP_MAX, b"y" * (LOCKSTEP_MAX + 1), b"\xff" * 5000,
              ("ab\u00e9c" * 200_000).encode()[:1_000_000], bytes(rng.integers(0, 256, 300_001, dtype=np.uint8))]
    values += [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.integers(0, 3000, 40)]
    want = [_reference_fnv1a64(v) for v in values]
    assert _hash_all(values) == want
    order = rng.permutation(len(values))  # long values between short ones, in any order
    assert _hash_all([values[i] for i in order]) == [want[i] for i in order]
    assert _reference_fnv1a64(b"a") == 0xAF63DC4C8601EC8C  # the published test vector


def test_hash_values_of_a_long_text_column_field():
    field = "é" * 600_000  # 1.2 MB of UTF-8
    hashed = hash_values(pa.array([field, None, "a", field]))
    assert hashed.tolist() == [_reference_fnv1a64(field.encode()), 0xCBF29CE484222325, 0xAF63DC4C8601EC8C,
                               _reference_fnv1a64(field.encode())]


# ----- 3. a full disk under `data prepare` and `data criteo` ------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only: skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _csv_input(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    rows = "".join(f"{i % 2},{i * 0.5},c{rng.integers(0, 5000)}\n" for i in range(20_000))
    (folder / "e.csv").write_text("clicked,price,country\n" + rows)
    (folder / "s.yaml").write_text("label: clicked\ndense: {price: log1p}\ncategorical:\n  country: {}\n")
    return ["prepare", str(folder / "e.csv"), "--schema", str(folder / "s.yaml")]


def _criteo_input(folder: Path) -> list[str]:
    from tests.criteo_helpers import raw_rows, write_raw

    return ["criteo", str(write_raw(folder / "train.txt", raw_rows(2000)))]


@pytest.mark.parametrize("writer", [_csv_input, _criteo_input])
def test_a_full_disk_is_one_line_naming_the_output_and_the_space(tiny_disk, tmp_path, writer):
    out = tiny_disk / "day1" / "out"
    result = cli("data", *writer(tmp_path), "--out", str(out), "--quiet")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"--out {out}: writing the output failed" in lines[0] and "KiB free on its filesystem" in lines[0]
    assert "expected room for about" in lines[0]
    assert list((tiny_disk / "day1").iterdir()) == []  # no staging directory left
    assert shutil.disk_usage(tiny_disk).used < 16 * 1024


# ----- 4. ports ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "message"), [
    ("launch.master_port=70000", "launch.master_port: got 70000, expected a TCP port 0..65535"),
    ("launch.master_port=-1", "launch.master_port: got -1, expected a TCP port 0..65535"),
    ("launch.rdzv_endpoint=10.0.0.1:65536", "launch.rdzv_endpoint: got '10.0.0.1:65536', expected host:port"),
    ("launch.rdzv_endpoint=node0:http", "launch.rdzv_endpoint: got 'node0:http', expected host:port"),
    ("launch.ray_address=ray://head:99999", "launch.ray_address: got 'ray://head:99999', expected host:port"),
])
def test_a_port_out_of_range_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    result = cli("plan", override, "--world-size", "2")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and message in result.stderr


def test_ports_in_range_and_addresses_without_a_port_pass():
    for override in ("launch.master_port=0", "launch.master_port=65535", "launch.rdzv_endpoint=node0",
                     "launch.rdzv_endpoint='[::1]:29400'", "launch.ray_address=auto", "launch.ray_address=ray://head:10001",
                     "launch.ray_address=head:6379"):
        load_config(None, [override])


# ----- 5. a million tables ----------------------------------------------------------------------------------------


def test_too_many_tables_are_refused_in_one_line_before_any_work_per_table():
    sizes = "[" + ",".join(["10"] * 5000) + "]"
    started = time.perf_counter()
    result = cli("plan", "model.flavor=debug", f"model.table_sizes={sizes}", "--world-size", "2")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0
    assert "model.table_sizes: 5,000 tables, more than the 4,096 disttrain supports" in result.stderr
    # A million, handed to the API directly (no YAML to parse): refused before the model or the plan exist.
    from disttrain.api import plan

    cfg = load_config(None, ["model.flavor=debug"])
    cfg.model.table_sizes = [10] * 1_000_000
    with pytest.raises(ConfigError, match=r"model.table_sizes: 1,000,000 tables, more than the 4,096"):
        plan(cfg, 2)
    print(f"refused in {time.perf_counter() - started:.2f} s")


def test_data_prepare_refuses_a_schema_of_too_many_columns(tmp_path):
    (tmp_path / "s.yaml").write_text("label: clicked\ncategorical:\n" + "".join(f"  c{i}: {{}}\n" for i in range(5000)))
    (tmp_path / "e.csv").write_text("clicked\n1\n")
    result = cli("data", "prepare", str(tmp_path / "e.csv"), "--schema", str(tmp_path / "s.yaml"), "--out",
                 str(tmp_path / "out"), "--quiet")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "categorical columns: 5,000 tables, more than the 4,096" in result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-out-*"))


# ----- 6. a dynamic table's ids crowding one rank -----------------------------------------------------------------


def test_ids_of_one_ranks_buckets_past_the_capacity_name_the_rank_the_ids_and_the_fix():
    candidates = torch.arange(20_000, dtype=torch.int64)
    ids = candidates[bucket_of(candidates) < NUM_BUCKETS // 2][:300]  # all in rank 0's half of 2 ranks' buckets
    shard = DynamicShard(table="users", table_index=0, dim=2, num_rows=1000, seed=0, dtype=torch.float32,
                         min_count=1, ttl_steps=0, capacity=256, rank=0)
    with pytest.raises(DataError) as caught:
        shard.rows_of(ids, train=True)
    message = str(caught.value)
    assert "table users: one step brings 300 distinct ids to rank 0, more than model.dynamic_capacity=256" in message
    assert "raise model.dynamic_capacity to 300 or more (0 = unbounded)" in message
    assert "top 12 bits of mix64(id)" in message and "\n" not in message
    shard = DynamicShard(table="users", table_index=0, dim=2, num_rows=1000, seed=0, dtype=torch.float32,
                         min_count=1, ttl_steps=0, capacity=300)
    assert (shard.rows_of(ids, train=True) > 0).all()  # the capacity it named holds them
