"""The real CLI: plan output, bad input (one line, exit 2, no traceback; checked in-process through
`disttrain.cli.main`), and end-to-end runs under the local launcher and torchrun, on one node and on two, whose
results equal a single-process run (the session's `local_reference`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch_helpers import PARITY, assert_same_training, clean_env, cli, disttrain


def test_plan_json_without_processes():
    out = cli("plan", "model.flavor=kaggle", "model.max_rows=1000000", "--world-size", "2", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert len(plan["tables"]) == 26 and len(plan["ranks"]) == 2
    assert {"name", "type", "ranks", "shards"} <= set(plan["tables"][0])
    assert sum(r["weight_bytes"] for r in plan["ranks"]) == sum(t["rows"] * 16 * 4 for t in plan["tables"])


def test_plan_accepts_a_gpu_backend():
    out = cli("plan", "launch.backend=nccl", "--world-size", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["tables"]) == 4


def test_plan_text_lists_tables_and_ranks():
    out = cli("plan", "sharding.strategy=row_wise", "train.batch_size=48", "--world-size", "3")
    assert out.returncode == 0, out.stderr
    assert "row_wise" in out.stdout and "0: 17x8, 1: 17x8, 2: 16x8" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "train.batchsize=8"], "train.batchsize: unknown key"),
        (["train", "sharding.strategy=diagonal"], "sharding.strategy: got 'diagonal', expected one of"),
        (["launch", "train.batch_size=9", "launch.nproc_per_node=2"], "train.batch_size: got 9, expected a multiple of the world size 2"),
        (["plan", "sharding.strategy=column_wise", "sharding.num_column_shards=12", "--world-size", "2"],
         "sharding.num_column_shards: 12 column shards for table t0 of dim 8; expected at most 8"),
        (["launch", "missing.yaml"], "missing.yaml: config file not found"),
        (["launch", "launch.backend=nccl"], "launch.backend: nccl needs CUDA GPUs and a CUDA build of torch"),
        (["train", "launch.backend=nccl"], "launch.backend: nccl needs CUDA GPUs and a CUDA build of torch"),
        (["launch", "launch.backend=ccl"], "launch.backend: ccl needs the oneccl_bindings_for_pytorch package, which is not installed; it is not on PyPI"),
        (["launch", "launch.backend=mpi"], "launch.backend: got 'mpi', expected one of auto, gloo, nccl, ccl"),
        (["launch", "launch.launcher=horovod", "launch.hosts=node1"], "launch.hosts: got 'node1', expected host:slots"),
        (["launch", "launch.launcher=torchrun", "launch.nnodes=2", "launch.rdzv_endpoint=node0"],
         "launch.rdzv_endpoint: got 'node0', expected host:port"),
        (["launch", "launch.launcher=ray", "launch.ray_address=http://127.0.0.1:8265"],
         "launch.ray_address: got 'http://127.0.0.1:8265', a dashboard (job submission) address"),
        (["launch", "launch.rdzv_is_host=maybe"], "launch.rdzv_is_host: got 'maybe', expected true, false or auto"),
        (["train", "model.table_sizes=[4,x]"], "model.table_sizes[1]: got 'x' (str), expected int"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
    out = cli(*args, f"run.output_dir={tmp_path}/out")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


@pytest.mark.slow
def test_local_and_torchrun_launchers_equal_single_process(tmp_path, local_reference):
    single = disttrain("train", *PARITY, f"run.output_dir={tmp_path}/single")
    assert single.returncode == 0, single.stderr
    torchrun = disttrain("launch", *PARITY, f"run.output_dir={tmp_path}/torchrun", "launch.launcher=torchrun")
    assert torchrun.returncode == 0, torchrun.stderr + torchrun.stdout
    ref = _summary(tmp_path / "single")
    assert ref["world_size"] == 1 and ref["launcher"] == "none"
    for name, summary in (("local", local_reference), ("torchrun", _summary(tmp_path / "torchrun"))):
        assert summary["launcher"] == name and summary["world_size"] == 2
        assert summary["train_loss"] == pytest.approx(ref["train_loss"], abs=1e-5)
        assert summary["eval_auc"] == pytest.approx(ref["eval_auc"], abs=1e-4)
        assert summary["eval_logloss"] == pytest.approx(ref["eval_logloss"], abs=1e-5)
        assert summary["samples_per_s"] > 0 and summary["steps"] == 16
        assert {t["type"] for t in summary["plan"]["tables"]} == {"table_wise", "row_wise"}  # auto: both kinds
        assert [w["rank"] for w in summary["workers"]] == [0, 1]
        assert len({w["pid"] for w in summary["workers"]}) == 2
        assert all(w["cpus"] and w["threads"] >= 1 for w in summary["workers"])
    assert_same_training(_summary(tmp_path / "torchrun"), local_reference)
    assert (tmp_path / "torchrun" / "config.yaml").exists()
    # One log line per interval from rank 0 only (plus the final one).
    assert torchrun.stdout.count("step      8  loss") == 1
    assert "samples/s" in torchrun.stdout and "eval @ step 16: auc" in torchrun.stdout


@pytest.mark.slow
def test_local_launcher_pins_workers_to_disjoint_cores(local_reference):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    workers = local_reference["workers"]
    cpus = [set(w["cpus"]) for w in workers]
    assert cpus[0] and cpus[1] and not cpus[0] & cpus[1]
    plan = json.loads(cli("topology", "--nproc-per-node", "2", "--affinity", "core", "--json").stdout)
    for worker, planned in zip(workers, plan["ranks"]):
        assert worker["cpus"] == planned["cpus"] == worker["planned_cpus"]  # real affinity == plan
        assert worker["threads"] == len(planned["cpus"])
        assert worker["env"]["OMP_NUM_THREADS"] == str(len(planned["cpus"]))
    # The pinning table is in the log.
    assert "memory" in local_reference["_stdout"] and "allocator" in local_reference["_stdout"]


@pytest.mark.slow
def test_user_thread_setting_and_allocator_choice_are_honoured(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "disttrain.cli", "launch", *PARITY, f"run.output_dir={tmp_path}/user",
         "launch.nproc_per_node=1", "launch.allocator=off", "train.steps=2", "run.tensorboard=false"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert out.returncode == 0, out.stderr
    (worker,) = _summary(tmp_path / "user")["workers"]
    assert worker["threads"] == 1 and worker["user_env"] == {"OMP_NUM_THREADS": "1"}
    assert "OMP_NUM_THREADS" not in worker["env"] and worker["allocator"] == "system"
    assert worker["cpus"] == sorted(os.sched_getaffinity(0))  # one rank gets every core


@pytest.mark.slow
def test_a_failing_worker_stops_the_launch(tmp_path):
    env_fault = {"DISTTRAIN_FAULT": "1:5"}  # rank 1 dies abruptly at step 5 (fault injection)
    out = subprocess.run(
        [sys.executable, "-m", "disttrain.cli", "launch", *PARITY, f"run.output_dir={tmp_path}/fail",
         "train.steps=1000", "run.tensorboard=false"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env_fault},
    )
    assert out.returncode == 17, out.stderr
    assert "local rank 1 exited with code 17; stopped the other workers" in out.stderr
    assert not (tmp_path / "fail" / "summary.json").exists()


@pytest.mark.parametrize(
    ("launcher", "key"),
    [("torchrun", "launch.rdzv_endpoint"), ("torchrun", "launch.master_addr"), ("local", "launch.master_addr")],
)
def test_a_rendezvous_nobody_answers_fails_in_one_line(launcher, key, tmp_path):
    """Node 1 of 2, node 0 never started: one line after launch.timeout_s, no hang, no traceback."""
    from disttrain.runtime.env import free_port

    port = free_port()
    where = [f"launch.rdzv_endpoint=127.0.0.1:{port}"] if key == "launch.rdzv_endpoint" else [f"launch.master_port={port}"]
    out = cli("launch", *PARITY, f"launch.launcher={launcher}", "launch.nnodes=2", "launch.node_rank=1",
              "launch.nproc_per_node=1", "launch.timeout_s=2", *where, f"run.output_dir={tmp_path}/out")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{key}: nothing answers at 127.0.0.1:{port} within 2 s (launch.timeout_s)" in lines[0]


def _two_nodes(tmp_path, launcher: str, extra: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "disttrain.cli", "launch", *PARITY, f"run.output_dir={tmp_path}/node{node}",
             f"launch.launcher={launcher}", "launch.nnodes=2", f"launch.node_rank={node}",
             "launch.nproc_per_node=1", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        )
        for node in (0, 1)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "rendezvous"),
    [("torchrun", "static"), ("torchrun", "c10d"), ("local", "static")],
)
def test_two_nodes_on_loopback(tmp_path, launcher, rendezvous, local_reference):
    from disttrain.runtime.env import free_port

    port = free_port()
    extra = [f"launch.rdzv_endpoint=127.0.0.1:{port}"] if rendezvous == "c10d" else [f"launch.master_port={port}"]
    results = _two_nodes(tmp_path, launcher, extra)
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    # Rank 0 writes the summary. Static: node 0 holds rank 0; c10d rendezvous assigns node ranks in
    # arrival order, so it may be either node, never both.
    written = [n for n in ("node0", "node1") if (tmp_path / n / "summary.json").exists()]
    assert written == ["node0"] if rendezvous == "static" else len(written) == 1
    summary = _summary(tmp_path / written[0])
    assert summary["world_size"] == 2 and summary["launcher"] == launcher
    assert_same_training(summary, local_reference)  # one rank on each node == two ranks on one
