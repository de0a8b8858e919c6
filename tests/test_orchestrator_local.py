"""The local backend end to end: detached submit -> status -> logs -> completed, with 2 ranks
under torch.distributed.run; and cancel. Tiny model, tiny dataset, a few steps."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from orchestrator.backends import JobState
from orchestrator.store import JobStore
from tests.test_orchestrator_cli import assert_no_secrets, clean_env, maectl

pytestmark = pytest.mark.slow

TINY_JOB = """\
description: a tiny test job
resources: {{nodes: 1, gpus_per_node: 0, tasks_per_node: {ranks}, cpus_per_task: 1}}
model: {{name: mae_vit_micro_patch4_32, norm_pix_loss: true}}
data: {{url: {data}, img_size: 32, batch_size: {batch}, num_workers: 0, shuffle_buffer: 64}}
optim: {{lr: 2.0e-3, warmup_epochs: 1}}
train: {{epochs: {epochs}, log_every: 2}}
checkpoint: {{every_steps: 4, keep_every_epochs: null}}
monitor: {{recon_every_epochs: 1, recon_images: 4}}
tracking: {{enabled: {tracking}}}
"""


def tiny_job(tmp_path: Path, data: str, *, ranks: int = 1, epochs: int = 1, tracking: bool = False) -> str:
    """8 optimizer steps per epoch: 400 demo images / (50 per step)."""
    path = tmp_path / "tiny-test-job.yaml"
    path.write_text(TINY_JOB.format(ranks=ranks, data=data, batch=50 // ranks, epochs=epochs, tracking=str(tracking).lower()))
    return str(path)


def submitted_handle(stdout: str) -> str:
    match = re.search(r"submitted (local-[0-9a-f]{6})", stdout)
    assert match, stdout
    return match[1]


def group_exists(pgid: int, within: float) -> bool:
    """Whether process group `pgid` still has members after `within` seconds (zombies are
    reaped by init shortly after they die, so allow a moment)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.2)
    return True


def wait_for(store: JobStore, handle: str, states: set[JobState], timeout: float = 150.0):
    from orchestrator.submission import refresh

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = refresh(store.get(handle), store)
        if job.state in states:
            return job
        time.sleep(0.5)
    raise AssertionError(f"{handle} still {job.state.value} after {timeout} s:\n{Path(job.log_path).read_text()}")


def test_detached_two_ranks_status_logs_complete(tmp_path, demo_shards, monkeypatch):
    env = clean_env(tmp_path)
    monkeypatch.setenv("MAECTL_HOME", env["MAECTL_HOME"])
    result = maectl(["submit", tiny_job(tmp_path, demo_shards, ranks=2), "--backend", "local"], env)
    assert result.returncode == 0, result.stderr
    handle = submitted_handle(result.stdout)
    store = JobStore(Path(env["MAECTL_HOME"]) / "jobs.db")
    job = store.get(handle)
    assert job.state in (JobState.RUNNING, JobState.COMPLETED) and job.native_id and job.info["pid"]

    job = wait_for(store, handle, {JobState.COMPLETED, JobState.FAILED})
    logs = maectl(["logs", handle], env)
    assert job.state is JobState.COMPLETED and job.exit_code == 0, logs.stdout
    assert "2 rank(s)" in logs.stdout and "done: 1 epochs, 8 steps" in logs.stdout
    assert_no_secrets(logs.stdout)

    out = Path(job.output_dir)
    assert out == tmp_path / "out" / "tiny-test-job" / handle  # <output_root>/<experiment>/<handle>
    assert (out / "final" / "encoder_timm.pt").exists() and list((out / "images").glob("*.png"))
    status = maectl(["status", handle[:9]], env)  # a unique prefix will do
    assert status.returncode == 0 and "completed" in status.stdout and "train/loss" in status.stdout
    listing = maectl(["list", "--jobs"], env)
    assert handle in listing.stdout and "completed" in listing.stdout


def test_cancel_stops_the_process_group(tmp_path, demo_shards, monkeypatch):
    env = clean_env(tmp_path)
    monkeypatch.setenv("MAECTL_HOME", env["MAECTL_HOME"])
    result = maectl(["submit", tiny_job(tmp_path, demo_shards, epochs=200), "--backend", "local"], env)
    assert result.returncode == 0, result.stderr
    handle = submitted_handle(result.stdout)
    store = JobStore(Path(env["MAECTL_HOME"]) / "jobs.db")
    log = Path(store.get(handle).log_path)
    deadline = time.monotonic() + 120
    while "step" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "step" in log.read_text(), log.read_text()

    cancelled = maectl(["cancel", handle], env)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stdout + cancelled.stderr
    job = store.get(handle)
    assert job.state is JobState.CANCELLED and job.cancel_requested
    assert not group_exists(job.info["pid"], within=10.0), "the job's processes are gone (reaped)"
    again = maectl(["cancel", handle], env)
    assert again.returncode == 0 and "already ended" in again.stdout


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


@pytest.mark.integration
def test_a_runner_killed_outright_does_not_leave_its_mlflow_run_running(tmp_path, demo_shards, mlflow_tracking_uri, monkeypatch):
    """SIGKILL of the runner (what the kernel's OOM killer does): it cannot close its MLflow run,
    so the supervisor ends it FAILED once the exit is recorded; the job is FAILED, 137."""
    import uuid

    from mlflow.tracking import MlflowClient

    env = clean_env(tmp_path)
    monkeypatch.setenv("MAECTL_HOME", env["MAECTL_HOME"])
    experiment = f"tiny-killed-{uuid.uuid4().hex[:8]}"
    result = maectl(["submit", tiny_job(tmp_path, demo_shards, epochs=200, tracking=True), "--backend", "local",
                     f"tracking.uri={mlflow_tracking_uri}", f"tracking.experiment={experiment}"], env)
    assert result.returncode == 0, result.stderr
    handle = submitted_handle(result.stdout)
    store = JobStore(Path(env["MAECTL_HOME"]) / "jobs.db")
    job = store.get(handle)
    run_id_file = Path(job.output_dir) / "mlflow_run_id"
    log = Path(job.log_path)
    deadline = time.monotonic() + 120
    while not ("step" in (log.read_text() if log.exists() else "") and run_id_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.3)
    client = MlflowClient(mlflow_tracking_uri)
    run_id = run_id_file.read_text().strip()
    assert client.get_run(run_id).info.status == "RUNNING"

    (runner,) = _children(job.info["pid"])  # supervise -> python -m orchestrator.runner
    os.kill(runner, 9)
    job = wait_for(store, handle, {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
    assert job.state is JobState.FAILED and job.exit_code in (-9, 137)
    deadline = time.monotonic() + 60
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_run(run_id).info.status == "FAILED"
    assert "killed by signal 9" in log.read_text() and "is now FAILED" in log.read_text()
