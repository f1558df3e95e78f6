"""Scale-out tools: `plan --simulate` (and its plot), the plan printed readably at 64 and 1,024 ranks, `disttrain
probe` with real workers, and their bad input."""

from __future__ import annotations

import json

import pytest

from disttrain.config import load_config
from disttrain.errors import ConfigError
from disttrain.planning.cluster import machine_of
from disttrain.planning.simulate import parse_worlds, simulate
from disttrain.sharding.planner import plan_sharding
from disttrain.tables import EmbeddingTableSpec
from tests.launch_helpers import disttrain


def test_simulate_predicts_weak_scaling_and_report_draws_it(tmp_path):
    cfg = load_config("bench_kaggle", ["sharding.strategy=auto", "cluster.ranks_per_node=8",
                                       "cluster.inter_gbs=0.5"])
    result = simulate(cfg, [1, 2, 8, 64], batch_per_rank=512)
    rows = {r["world_size"]: r for r in result["worlds"]}
    assert [r["nodes"] for r in result["worlds"]] == [1, 1, 1, 8]
    assert all(r["global_batch"] == 512 * r["world_size"] for r in result["worlds"])
    assert rows[1]["exchange_ms"] == 0 and rows[1]["allreduce_ms"] == 0
    for r in result["worlds"]:
        assert r["step_ms"] == pytest.approx(r["compute_ms"] + r["exchange_ms"] + r["allreduce_ms"])
    assert rows[64]["a2a_inter_node_bytes_per_rank"]["max"] > 0 == rows[8]["a2a_inter_node_bytes_per_rank"]["max"]
    assert rows[8]["memory_mib_per_rank"]["max"] / rows[8]["memory_mib_per_rank"]["min"] <= 1.1  # balanced
    # The same compute per rank at every size (weak scaling), more exchange as the world grows.
    assert rows[64]["compute_ms"] == pytest.approx(rows[2]["compute_ms"], rel=0.1)
    assert rows[64]["exchange_ms"] > rows[8]["exchange_ms"] > rows[2]["exchange_ms"]
    (tmp_path / "simulate.json").write_text(json.dumps(result))
    from disttrain.report import render

    written = render([tmp_path], tmp_path / "report")
    assert written["plots"] == [str(tmp_path / "report" / "scaling.png")]
    assert "Simulated weak scaling" in (tmp_path / "report" / "report.html").read_text()


def test_the_plan_reads_at_scale():
    tables = [EmbeddingTableSpec(f"t{i}", 1_000_000, 16) for i in range(26)]
    text = plan_sharding(tables, world_size=64, strategy="row_wise").describe()
    assert "64 shards on ranks 0-63: 15,625 rows x 16 cols" in text
    assert "64 ranks, total MiB min" in text and max(map(len, text.splitlines())) < 160
    big = [EmbeddingTableSpec(f"t{i}", 10**7, 64) for i in range(1000)]
    text = plan_sharding(big, world_size=1024, ranks_per_node=8).describe()
    assert len(text.splitlines()) < 1000 + 20 and max(map(len, text.splitlines())) < 160


def test_simulate_and_probe_refuse_bad_input_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"--simulate: got 'x' in '1,x'; expected world sizes"):
        parse_worlds("1,x")
    bad = tmp_path / "probe.json"
    bad.write_text('{"machine": {\n "gemm_gflops": }')
    with pytest.raises(ConfigError, match=rf"cluster.probe: {bad} line 2: not JSON"):
        machine_of(load_config(None, [f"cluster.probe={bad}"]))
    bad.write_text(json.dumps({"machine": {"inter_gbs": -1}}))
    with pytest.raises(ConfigError, match=r"machine.inter_gbs is -1; expected a positive number"):
        machine_of(load_config(None, [f"cluster.probe={bad}"]))
    with pytest.raises(ConfigError, match=r"cluster.inter_gbs: got -2.0, expected a number >= 0"):
        load_config(None, ["cluster.inter_gbs=-2.0"])
    with pytest.raises(ConfigError, match=r"sharding.balance: got 0.9, expected a number >= 1"):
        load_config(None, ["sharding.balance=0.9"])


def test_probe_measures_with_the_jobs_workers_and_the_planner_reads_it(tmp_path):
    out = disttrain("probe", "launch.nproc_per_node=2", f"run.output_dir={tmp_path}", "--out",
                    str(tmp_path / "copy.json"), timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "intra-node GB/s per rank" in out.stdout and f"cluster.probe={tmp_path / 'copy.json'}" in out.stdout
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["world_size"] == 2 and result["hosts"] == 1 and len(result["per_rank"]) == 2
    machine = result["machine"]
    assert set(machine) == {"gemm_gflops", "dense_efficiency", "memory_gbs", "intra_gbs", "intra_latency_us"}
    assert all(v > 0 for v in machine.values()) and machine["dense_efficiency"] <= 1
    read = machine_of(load_config(None, [f"cluster.probe={tmp_path / 'copy.json'}", "cluster.memory_gbs=3.5"]))
    assert read.gemm_gflops == machine["gemm_gflops"] and read.intra_gbs == machine["intra_gbs"]
    assert read.memory_gbs == 3.5  # a key that is set wins over the probe
    assert read.inter_gbs == 1.25  # not measured on one host: the default
