"""Ray across the dev stack's 2-node cluster (`ray_mn`: head 127.0.2.1, worker 127.0.2.2 with its
own /tmp, /dev/shm and HOME), through `maectl submit --backend ray`:

- a 2-worker pretraining, one worker per node (SPREAD), submitted from a copy of the checkout under
  the head's /tmp (the worker node cannot see it): the code reaches both nodes in the runtime env,
  checkpoints and Ray's pointer checkpoints live in S3, a SIGKILL of the worker on the second node
  restarts the group from get_checkpoint(), and the job keeps exactly one MLflow run;
- a local output or storage path is refused before submission;
- a bad config fails at once instead of using up max_failures;
- with the site's cluster_has_maectl, a cluster whose maectl is not the submitter's is refused at
  the start of the job (exit 2).

Needs `infra/stack.sh up` (ray_mn, s3, mlflow) and `source infra/.state/env.sh`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.backends.ray import RayBackend
from orchestrator.backends.states import JobState
from orchestrator.cli import main
from orchestrator.locations import PROJECT_ROOT
from tests.fixtures import jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEMO = "pretrain-vit-tiny-demo"
# Tiny and quick: no kNN / probe / reconstruction passes, a log line per step.
SMALL = ["resources.nodes=2", "resources.tasks_per_node=1", "resources.cpus_per_task=1", "resources.gpus_per_node=0",
         "monitor.knn_every_epochs=null", "monitor.recon_every_epochs=null", "monitor.baseline_at_init=false",
         "train.log_every=1", "data.batch_size=32", "data.num_workers=0"]
END = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
STEP_LINE = re.compile(r"epoch (\d+) step (\d+)/(\d+) loss")


def _need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"${name} is not set: `infra/stack.sh up && source infra/.state/env.sh` first", pytrace=False)
    return value


@pytest.fixture(scope="module")
def s3_data(demo_shards):
    """The demo shards in the stack's S3 (both nodes read them there); the bucket's URL prefix."""
    import s3fs

    bucket = _need("MAECTL_S3_BUCKET")
    prefix = f"s3://{bucket}/ray-mn-{uuid.uuid4().hex[:8]}"
    fs = s3fs.S3FileSystem()
    fs.put(demo_shards.rstrip("/") + "/", f"{prefix}/data/", recursive=True)
    return {"fs": fs, "prefix": prefix, "data": f"{prefix}/data"}


@pytest.fixture
def cluster(s3_data, tmp_path, monkeypatch, mlflow_tracking_uri):
    """The 2-node cluster as RAY_ADDRESS, a site file that passes the S3 credentials, a fresh
    MLflow experiment, output in S3."""
    import ray.job_submission  # noqa: F401 — before a test's capsys (Ray's loggers keep the stream they found)

    address = _need("MAECTL_TEST_RAY_MN_ADDRESS")
    site = tmp_path / "site.yaml"
    site.write_text("backend: ray\npass_env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]\n")
    out = f"{s3_data['prefix']}/out-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("MAECTL_SITE", str(site))
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", out)
    monkeypatch.delenv("MAECTL_JOBS_PATH", raising=False)
    monkeypatch.chdir(PROJECT_ROOT)
    experiment = f"test-ray-mn-{uuid.uuid4().hex[:8]}"
    overrides = [*SMALL, f"data.url={s3_data['data']}", f"tracking.uri={mlflow_tracking_uri}", f"tracking.experiment={experiment}"]
    return {"address": address, "site": site, "out": out, "fs": s3_data["fs"], "uri": mlflow_tracking_uri,
            "experiment": experiment, "overrides": overrides}


@pytest.fixture
def checkout_copy(tmp_path_factory):
    """This checkout's code under the head's /tmp (which the second node does not see), with one
    file more, so that its code digest is its own: a worker that ran /work/main's code instead (the
    venv's editable install, which both nodes see) would stop on the digest check."""
    folder = Path(f"/tmp/maectl-copy-{uuid.uuid4().hex[:8]}")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("orchestrator", "mae_core", "jobs"):
        shutil.copytree(PROJECT_ROOT / name, folder / name, ignore=ignore)
    (folder / "mae_core" / "_copy_marker.py").write_text(f"COPY = {folder.name!r}\n")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _copy_submit(copy: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    """`maectl submit` run from the copy (its packages first on the path, as an editable install of it would be)."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", DEMO, *overrides, "--backend", "ray"],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=180)


def _copy_digest(copy: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(copy))
    done = subprocess.run([sys.executable, "-c", "from orchestrator.ray_entry import code_digest, package_dirs; "
                           "print(code_digest(), package_dirs()[0].parent)"], cwd=copy, env=env, capture_output=True, text=True, check=True)
    digest, where = done.stdout.split()
    assert where == str(copy)
    return digest


def _log(record) -> str:
    return jobs.log(RayBackend(), record)


def _workers(log: str) -> list[dict]:
    return [{"rank": int(m[0]), "pid": int(m[1]), "ip": m[2], "code": m[3], "where": m[4]}
            for m in re.findall(r"ray worker rank (\d+)/\d+: pid (\d+) on (\S+), code (\w+) from (\S+)", log)]


def _steps(log: str) -> list[int]:
    return [int(m[1]) for m in STEP_LINE.findall(log)]


def _s3_checkpoint_steps(fs, output_dir: str) -> list[int]:
    try:
        names = fs.ls(f"{output_dir}/checkpoints", detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(int(m[1]) for n in names if (m := re.search(r"checkpoint-(\d{9})\.pt$", n)))


def _wait_for(predicate, timeout: float, what: str, record):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        state = RayBackend().status(record).state
        assert state not in END and time.monotonic() < deadline, f"{what}: job {state}, after {timeout:.0f}s at most\n{_log(record)[-4000:]}"
        time.sleep(0.3)


def test_two_node_job_from_a_tmp_checkout_survives_a_worker_kill(cluster, checkout_copy):
    digest = _copy_digest(checkout_copy)
    epochs = 4
    started = time.monotonic()
    done = _copy_submit(checkout_copy, [*cluster["overrides"], f"train.epochs={epochs}", "ray.max_failures=2"])
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = jobs.records()
    output_dir = record.output_dir
    assert output_dir.startswith("s3://")

    # Both ranks training: a step is an all-reduce over both.
    _wait_for(lambda: _steps(_log(record)), 240, "no training step", record)
    to_training = time.monotonic() - started
    first = _workers(_log(record))
    assert sorted(w["ip"] for w in first) == ["127.0.2.1", "127.0.2.2"], first  # one worker per node
    for worker in first:  # every process ran the copy's code, shipped by Ray, not the checkout both nodes see
        assert worker["code"] == digest, worker
        assert not worker["where"].startswith((str(PROJECT_ROOT), str(checkout_copy))), worker

    # SIGKILL the worker on the node with its own disk, after a checkpoint, mid-epoch.
    _wait_for(lambda: _s3_checkpoint_steps(cluster["fs"], output_dir), 240, "no checkpoint in S3", record)
    time.sleep(0.5)
    victim = next(w for w in first if w["ip"] == "127.0.2.2")
    latest = _s3_checkpoint_steps(cluster["fs"], output_dir)[-1]
    at_kill = max(_steps(_log(record)))
    os.kill(victim["pid"], signal.SIGKILL)

    status = jobs.wait(RayBackend(), record, END, timeout=420)
    log = _log(record)
    assert status.state == JobState.COMPLETED, log[-5000:]
    resumed = [int(s) for s in re.findall(r"resuming from step (\d+) \(\S+\), Ray Train's get_checkpoint\(\)", log)]
    assert resumed == [latest], (resumed, latest, log[-4000:])
    groups = _workers(log)
    assert len(groups) == 4 and {w["ip"] for w in groups[2:]} == {"127.0.2.1", "127.0.2.2"}
    assert {w["code"] for w in groups} == {digest}
    per_epoch = int(STEP_LINE.findall(log)[0][2]) // epochs
    # Work lost: the steps the first worker group took past the checkpoint it was resumed from
    # (read from the whole log afterwards; the log seen at the kill lags behind).
    at_kill = max(at_kill, max(_steps(log[:log.index("restarted worker group")])))
    lost = at_kill - latest
    assert 0 <= lost <= per_epoch, f"lost {lost} steps, more than one checkpoint interval ({per_epoch})"
    final = epochs * per_epoch
    assert f"done: {epochs} epochs, {final} steps" in log

    # Checkpoints in S3: the engine's, and Ray Train's pointers to them in its storage path.
    assert _s3_checkpoint_steps(cluster["fs"], output_dir)[-1] == final
    pointers = cluster["fs"].glob(f"{cluster['out']}/ray/{record.handle}/checkpoint-*/maectl_checkpoint.json")
    assert pointers, cluster["fs"].ls(f"{cluster['out']}/ray/{record.handle}")
    newest = json.loads(cluster["fs"].cat(sorted(pointers)[-1]))
    assert newest["step"] == final and newest["checkpoint"].startswith(output_dir)

    client, runs = jobs.mlflow_runs(cluster["uri"], cluster["experiment"])
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one job"
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags.get("resumes") == "1"
    history = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")}
    assert history >= set(range(1, final + 1))
    print(f"\n[ray_mn] submit -> both ranks training {to_training:.1f}s; kill at step {at_kill}, resumed from {latest} "
          f"(lost {lost} of {per_epoch} steps per checkpoint interval); 1 MLflow run; submit -> SUCCEEDED "
          f"{time.monotonic() - started:.1f}s; load {os.getloadavg()}")


def test_local_storage_is_refused_before_submission(cluster, capsys, tmp_path, monkeypatch):
    # The job asks for 2 nodes: its output folder on this machine's disk is refused, even in a dry-run.
    local = [*cluster["overrides"], f"output_dir={tmp_path}/out"]
    assert main(["submit", DEMO, *local, "--backend", "ray", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert ": output_dir:" in err and "node-local" in err and "shared_paths" in err, err
    # One node asked for, but the cluster has two and a restarted worker may land on either.
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "root"))
    one = [o for o in cluster["overrides"] if not o.startswith("resources.nodes")] + ["resources.nodes=1", "resources.tasks_per_node=1"]
    assert main(["submit", DEMO, *one, "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert ": ray.storage_path:" in err and "the Ray cluster has 2 nodes" in err, err
    # A folder the site declares shared is accepted (the job itself is not submitted: a dry-run).
    cluster["site"].write_text(cluster["site"].read_text() + f"shared_paths: [{tmp_path}]\n")
    assert main(["submit", DEMO, *one, f"data.url={cluster['overrides'][-3].split('=', 1)[1]}", "--backend", "ray", "--dry-run"]) == 0
    assert jobs.records() == []


def test_bad_config_fails_at_once_not_max_failures_times(cluster):
    started = time.monotonic()
    # Valid for maectl (it cannot know the cluster has no GPU), refused by the engine on every rank: exit 2.
    record = jobs.submit(DEMO, [*cluster["overrides"], "train.precision=fp16", "ray.max_failures=3"], "ray")
    status = jobs.wait(RayBackend(), record, END, timeout=300)
    log = _log(record)
    assert status.state == JobState.FAILED and status.exit_code == 2, log[-4000:]
    assert log.count("ray worker rank 0/") == 1, "a bad config was retried"
    assert "not retried" in log and "fp16 needs a GPU" in log
    print(f"\n[ray_mn] bad config: FAILED (exit 2) after one attempt, {time.monotonic() - started:.1f}s from submit")


def test_cluster_has_maectl_is_checked_against_the_submitter(cluster, checkout_copy):
    cluster["site"].write_text(cluster["site"].read_text() + "cluster_has_maectl: true\n")
    done = _copy_submit(checkout_copy, [*cluster["overrides"], "train.epochs=1"])
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = jobs.records()
    status = jobs.wait(RayBackend(), record, END, timeout=180)
    log = _log(record)
    # The cluster runs the checkout both nodes see (/work/main), not the copy the job came from.
    assert status.state == JobState.FAILED and status.exit_code == 2, log[-3000:]
    assert "cluster_has_maectl: false" in log and _copy_digest(checkout_copy) in log
    assert "ray worker rank" not in log  # stopped by the driver, before any worker started
