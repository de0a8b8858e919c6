"""The Ray backend: dry-run golden files and pre-submit checks, then real jobs on the stack's Ray
head (`infra/stack.sh up ray mlflow`): a run to completion, workers SIGKILLed mid-run that Ray
Train restarts and the engine resumes (one MLflow run throughout), a cancel, and checks that
stop a submission before anything reaches the cluster.

Regenerate the golden files after an intended change with MAECTL_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from mae_core.exitcodes import ExitCode
from orchestrator.backends.ray import RAY_PASSED_ENV_PREFIXES, RayBackend, Scaling, normalise_address
from orchestrator.backends.states import JobState
from orchestrator.cli import main
from orchestrator.locations import PROJECT_ROOT
from orchestrator.ray_entry import code_digest
from orchestrator.resources import Resources
from tests.fixtures import jobs
from tests.fixtures.plans import check_golden, plan_part, rendered_specs

DEMO = "pretrain-vit-tiny-demo"
# Two CPU workers that fit the development head (2 CPUs); no kNN/reconstruction passes, which
# only cost time here; a metric line per step, so that the kill test can tell where it struck.
TWO_WORKERS = ["resources.tasks_per_node=2", "resources.cpus_per_task=1", "monitor.knn_every_epochs=null",
               "monitor.recon_every_epochs=null", "train.log_every=1"]
STEPS_PER_EPOCH = 7  # the demo dataset: 1000 images / (64 per rank x 2 ranks), equal batches per rank


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.delenv("MAECTL_JOBS_PATH", raising=False)
    monkeypatch.chdir(PROJECT_ROOT)  # experiment sources are shown relative to the working directory


def _only_env(monkeypatch, **values):
    """Exactly these of the variables that the backend passes to jobs; none inherited."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    jobs.only_env(monkeypatch, RAY_PASSED_ENV_PREFIXES, **values)


_check_golden = check_golden


def _dry_run(capsys, overrides: list[str]) -> tuple[str, dict]:
    """(the plan as rendered, the job spec it writes, once per copy: the job folder's and the working_dir's)."""
    assert main(["submit", DEMO, *overrides, "--backend", "ray", "--dry-run"]) == 0
    out = capsys.readouterr().out
    specs = rendered_specs(out)
    assert len(specs) == 2 and specs[0] == specs[1]
    # The digest of the code changes with every edit of orchestrator/ or mae_core/.
    return plan_part(out).replace(code_digest(), "<code digest>"), specs[0]


# -- without a cluster ---------------------------------------------------------------------------
def test_dry_run_cpu_golden(capsys, monkeypatch):
    _only_env(monkeypatch, AWS_SECRET_ACCESS_KEY="golden-secret-value", MLFLOW_TRACKING_URI="http://alice:hunter22@127.0.0.1:5000",
              RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5")
    # The address is not up: a dry-run never contacts the cluster.
    head, spec = _dry_run(capsys, [*TWO_WORKERS, "ray.address=127.0.0.1:8265", "ray.max_failures=2"])
    _check_golden("ray_dry_run_cpu.txt", head)
    assert "golden-secret-value" not in head and "hunter22" not in head
    # Credentials stay here (no pass_env in the suite's site file); they are named, not shown.
    held = next(line for line in head.splitlines() if "credentials not passed" in line)
    assert "AWS_SECRET_ACCESS_KEY" in held and "MLFLOW_TRACKING_URI" in held
    assert "AWS_SECRET_ACCESS_KEY=" not in head and "MLFLOW_TRACKING_URI=" not in head
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5" in head
    assert spec["handle"] == "<handle>" and spec["backend"] == "ray" and spec["resolved"]["ray"]["max_failures"] == 2


def test_dry_run_gpu_multinode_golden(capsys, monkeypatch):
    _only_env(monkeypatch)
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", "s3://maectl-golden/runs")
    head, spec = _dry_run(capsys, ["resources.nodes=2", "resources.gpus_per_node=4", "resources.tasks_per_node=null", "resources.cpus_per_task=8",
                                   "ray.address=http://127.0.0.1:8265", "ray.storage_path=s3://maectl-golden/ray-train"])
    _check_golden("ray_dry_run_gpu.txt", head)
    assert spec["resolved"]["output_dir"] == "<output_root>/pretrain-vit-tiny-demo/<handle>"


def test_multinode_job_refuses_node_local_storage(capsys, monkeypatch, tmp_path):
    _only_env(monkeypatch)
    code = main(["submit", DEMO, "resources.nodes=2", "ray.address=http://127.0.0.1:8265", "--backend", "ray", "--dry-run"])
    assert code == 2
    assert "ray.storage_path" in capsys.readouterr().err


def test_submit_without_an_address_names_the_key(capsys, monkeypatch):
    _only_env(monkeypatch)
    assert main(["submit", DEMO, *TWO_WORKERS, "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert "ray.address" in err and "RAY_ADDRESS" in err
    assert not (Path(os.environ["MAECTL_HOME"]) / "jobs").exists()


def test_unreachable_cluster_exit_2_nothing_submitted(capsys, monkeypatch):
    _only_env(monkeypatch)
    started = time.monotonic()
    assert main(["submit", DEMO, *TWO_WORKERS, "ray.address=http://127.0.0.1:9", "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert "ray.address" in err and "does not answer" in err
    assert time.monotonic() - started < 20
    assert _records() == []


def test_site_pass_env_passes_named_credentials_shown_redacted(capsys, monkeypatch, tmp_path):
    _only_env(monkeypatch, AWS_SECRET_ACCESS_KEY="passed-secret-value", AWS_ACCESS_KEY_ID="maectl-dev",
              AWS_SESSION_TOKEN="held-token-value", AWS_ENDPOINT_URL="http://127.0.0.1:9000")
    site = tmp_path / "site.yaml"
    site.write_text("pass_env: [AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID]\n")
    monkeypatch.setenv("MAECTL_SITE", str(site))
    head, _ = _dry_run(capsys, [*TWO_WORKERS, "ray.address=127.0.0.1:8265"])
    assert "#   AWS_SECRET_ACCESS_KEY=<redacted>" in head and "#   AWS_ACCESS_KEY_ID=<redacted>" in head
    assert "#   AWS_ENDPOINT_URL=http://127.0.0.1:9000" in head  # an endpoint is no credential
    assert "passed-secret-value" not in head and "held-token-value" not in head
    held = next(line for line in head.splitlines() if "credentials not passed" in line)
    assert held.endswith(": AWS_SESSION_TOKEN")
    # What the job would really get: the named ones, in clear (Ray needs the values).
    from orchestrator import submission

    prepared = submission.prepare(DEMO, [*TWO_WORKERS, "ray.address=127.0.0.1:8265"], backend="ray", dry_run=True)
    env = submission.plan(prepared).job["runtime_env"]["env_vars"]
    assert env["AWS_SECRET_ACCESS_KEY"] == "passed-secret-value" and "AWS_SESSION_TOKEN" not in env


def test_multinode_storage_must_be_shared_or_s3(capsys, monkeypatch, tmp_path):
    _only_env(monkeypatch)
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", "s3://maectl-golden/runs")
    base = ["resources.nodes=2", "resources.tasks_per_node=1", "ray.address=http://127.0.0.1:8265"]
    # Output in S3 but the data on this machine's disk, not declared shared: refused, the key named.
    shared = tmp_path / "shared"
    assert main(["submit", DEMO, *base, f"data.url={shared}/data", "--backend", "ray", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert ": data.url:" in err and "shared_paths" in err, err
    site = tmp_path / "site.yaml"
    site.write_text(f"shared_paths: [{shared}]\n")
    monkeypatch.setenv("MAECTL_SITE", str(site))
    assert main(["submit", DEMO, *base, f"data.url={shared}/data", "--backend", "ray", "--dry-run"]) == 0
    capsys.readouterr()


def test_auth_token_from_env_file_or_default_and_sent(monkeypatch, tmp_path):
    import http.server
    import threading

    from orchestrator.backends import ray as ray_backend

    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_backend.ray_auth_token() is None and ray_backend.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-default-file\n")
    assert ray_backend.ray_auth_token() == "from-default-file"
    (tmp_path / "token").write_text("from-token-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert ray_backend.ray_auth_token() == "from-token-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert ray_backend.auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ray_backend.ray_auth_token() is None
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    with pytest.raises(ray_backend.RayUnreachable, match="RAY_AUTH_TOKEN_PATH"):
        ray_backend.ray_auth_token()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "sent-token")

    # What goes over the wire: an HTTP server that answers 401 without the header, as Ray's does.
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            ok = self.headers.get("Authorization") == "Bearer sent-token"
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b'{"version": "x"}' if ok else b"Unauthorized: Missing authentication token")

        def log_message(self, *_):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/version"
        assert ray_backend._http_json(url) == {"version": "x"}
        monkeypatch.delenv("RAY_AUTH_TOKEN")
        monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
        (tmp_path / ".ray" / "auth_token").unlink()
        with pytest.raises(ray_backend.RayUnreachable, match="HTTP 401.*RAY_AUTH_TOKEN"):
            ray_backend._http_json(url)
    finally:
        server.shutdown()
    assert seen == ["Bearer sent-token", None]


def test_which_worker_failures_end_the_job_at_once():
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from orchestrator.ray_entry import WorkerFailed, final_exit_code

    def group(*errors):
        return WorkerGroupError("x", {rank: e for rank, e in enumerate(errors)})

    def user(error):
        return UserExceptionWithTraceback(error, "Traceback ...")

    assert final_exit_code(group(user(WorkerFailed(1, ExitCode.BAD_INPUT)))) == ExitCode.BAD_INPUT
    assert final_exit_code(group(ActorDiedError(), user(WorkerFailed(0, ExitCode.NON_FINITE_LOSS)))) == ExitCode.NON_FINITE_LOSS
    assert final_exit_code(group(user(ModuleNotFoundError("No module named 'orchestrator'")))) == ExitCode.BAD_INPUT
    # A killed worker, an application error, a SIGTERM: another attempt may succeed.
    assert final_exit_code(group(ActorDiedError())) is None
    assert final_exit_code(group(user(WorkerFailed(1, ExitCode.FAILED)), user(WorkerFailed(0, ExitCode.TERMINATED)))) is None


def test_scaling_from_resources():
    cpu = Scaling.of(Resources(nodes=1, tasks_per_node=2, cpus_per_task=3))
    assert (cpu.workers, cpu.per_worker) == (2, {"CPU": 3})
    gpu = Scaling.of(Resources(nodes=4, gpus_per_node=8, cpus_per_task=10))
    assert (gpu.workers, gpu.per_worker) == (32, {"CPU": 10, "GPU": 1})
    # Per node, not in total: 3 nodes with 16 CPUs and 1 GPU hold 3 such workers, not 4.
    assert sum(gpu.slots({"CPU": 16.0, "GPU": 1.0}) for _ in range(3)) == 3
    assert gpu.slots({"CPU": 96.0}) == 0
    assert normalise_address("10.0.0.1:8265/") == "http://10.0.0.1:8265"


# -- against the stack's Ray head ----------------------------------------------------------------
_records = jobs.records
_metric_steps = jobs.metric_steps
_checkpoint_steps = jobs.checkpoint_steps
_mlflow_runs = jobs.mlflow_runs


def _submit(overrides: list[str]):
    return jobs.submit(DEMO, overrides, "ray")


def _wait(record, states, timeout: float):
    return jobs.wait(RayBackend(), record, states, timeout)


def _log(record) -> str:
    return jobs.log(RayBackend(), record)


@pytest.fixture
def ray_job_env(ray_address, mlflow_tracking_uri, monkeypatch):
    """The stack's Ray head and MLflow; a fresh MLflow experiment, so runs can be counted."""
    # Imported here, not first under a test's capsys: Ray's loggers keep the stream they found.
    import ray.job_submission  # noqa: F401

    _only_env(monkeypatch, RAY_ADDRESS=ray_address, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    experiment = f"test-ray-{uuid.uuid4().hex[:8]}"
    return {"uri": mlflow_tracking_uri, "experiment": experiment,
            "overrides": [*TWO_WORKERS, f"tracking.uri={mlflow_tracking_uri}", f"tracking.experiment={experiment}"]}


@pytest.mark.integration
def test_presubmit_checks_stop_before_the_cluster(ray_job_env, capsys, demo_shards):
    base = [*ray_job_env["overrides"], f"data.url={demo_shards}"]
    cases = {
        "resources": ["resources.tasks_per_node=3"],  # 3 workers x 1 CPU on a 2-CPU head
        "ray.storage_path": ["ray.storage_path=/proc/maectl-ray"],
        "data.url": ["data.url=/nonexistent/maectl-data"],
    }
    for key, extra in cases.items():
        assert main(["submit", DEMO, *base, *extra, "--backend", "ray"]) == 2, key
        err = capsys.readouterr().err
        assert f": {key}:" in err, err
    assert _records() == []


@pytest.mark.integration
def test_submit_runs_to_completion(ray_job_env):
    started = time.monotonic()
    record = _submit([*ray_job_env["overrides"], "train.epochs=2"])
    assert time.monotonic() - started < 30, "submit must return once the cluster accepted the job"
    assert record.native_id == record.handle and record.state == JobState.PENDING
    status = _wait(record, {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}, timeout=120)
    log = _log(record)
    assert status.state == JobState.COMPLETED, log[-3000:]
    assert "done: 2 epochs, 14 steps" in log
    assert _checkpoint_steps(record.output_dir)[-1] == 2 * STEPS_PER_EPOCH
    assert max(_metric_steps(record.output_dir)) == 2 * STEPS_PER_EPOCH
    assert (Path(record.output_dir) / "final" / "mae.pt").exists()
    client, runs = _mlflow_runs(ray_job_env["uri"], ray_job_env["experiment"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")][-1] == 2 * STEPS_PER_EPOCH
    print(f"\n[ray] clean 2-epoch job: {time.monotonic() - started:.1f}s from submit to SUCCEEDED")


def _reported_pids(record) -> list[tuple[int, int]]:
    """(rank, pid) as each worker reported it, oldest first."""
    return [(int(r), int(p)) for r, p in re.findall(r"ray worker rank (\d+)/\d+: pid (\d+)", _log(record))]


def _pid_of(record, rank: int, group: int = 1, timeout: float = 60) -> int:
    """The pid of `rank` in the `group`-th worker group (1: the first start, 2: the first restart, ...)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for r, p in _reported_pids(record) if r == rank]
        if len(pids) >= group:
            return pids[group - 1]
        time.sleep(0.3)
    raise AssertionError(f"rank {rank} of worker group {group} never reported its pid:\n{_log(record)[-3000:]}")


def _kill_after_checkpoint(record, rank: int, group: int, after_step: int) -> dict:
    """SIGKILL `rank` of worker group `group` mid-epoch, once a checkpoint newer than `after_step` exists."""
    pid = _pid_of(record, rank, group)
    deadline = time.monotonic() + 90
    while not [s for s in _checkpoint_steps(record.output_dir) if s > after_step]:
        assert time.monotonic() < deadline, f"no checkpoint after step {after_step}:\n{_log(record)[-3000:]}"
        time.sleep(0.1)
    time.sleep(0.6)  # into the next epoch: the kill costs real work, as it would in production
    checkpoint = _checkpoint_steps(record.output_dir)[-1]
    os.kill(pid, signal.SIGKILL)
    steps = _metric_steps(record.output_dir)
    return {"rank": rank, "pid": pid, "latest_checkpoint": checkpoint, "step_at_kill": max(steps) if steps else 0}


@pytest.mark.integration
def test_killed_workers_restart_and_resume_one_mlflow_run(ray_job_env):
    epochs = 8
    started = time.monotonic()
    record = _submit([*ray_job_env["overrides"], f"train.epochs={epochs}", "ray.max_failures=3"])
    kills = [_kill_after_checkpoint(record, rank=1, group=1, after_step=0)]
    # A second failure, of rank 0 (the one that holds the MLflow run), in the restarted group.
    kills.append(_kill_after_checkpoint(record, rank=0, group=2, after_step=kills[0]["latest_checkpoint"]))

    status = _wait(record, {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}, timeout=180)
    log = _log(record)
    assert status.state == JobState.COMPLETED, log[-4000:]
    resumes = [(int(m[0]), int(m[1])) for m in re.findall(r"resumed from \S+checkpoint-(\d+)\.pt at epoch \d+, batch \d+, step (\d+)", log)]
    assert len(resumes) == 2, log[-4000:]
    for kill, (checkpoint, step) in zip(kills, resumes):
        # Resumed from the newest checkpoint there was when the worker died.
        assert checkpoint == step == kill["latest_checkpoint"], (kills, resumes)
        lost = kill["step_at_kill"] - step
        assert 0 <= lost <= STEPS_PER_EPOCH, f"lost {lost} steps, more than one checkpoint interval (an epoch)"
        kill["epochs_lost"] = lost / STEPS_PER_EPOCH
    final = epochs * STEPS_PER_EPOCH
    assert f"done: {epochs} epochs, {final} steps" in log
    assert max(_metric_steps(record.output_dir)) == final and _checkpoint_steps(record.output_dir)[-1] == final

    client, runs = _mlflow_runs(ray_job_env["uri"], ray_job_env["experiment"])
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one job"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags.get("resumes") == "2"
    assert run.info.run_id == (Path(record.output_dir) / "mlflow_run_id").read_text().strip()
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert max(m.step for m in history) == final and {m.step for m in history} >= set(range(1, final + 1))
    elapsed = time.monotonic() - started
    print(f"\n[ray] kill test: {len(kills)} kills survived, epochs lost {[round(k['epochs_lost'], 2) for k in kills]}, "
          f"resumed from steps {[s for _, s in resumes]}, 1 MLflow run (resumes=2), {elapsed:.1f}s submit to SUCCEEDED")


@pytest.mark.integration
def test_cancel_stops_the_job_and_marks_the_run_killed(ray_job_env):
    record = _submit([*ray_job_env["overrides"], "train.epochs=200"])
    run_id_file = Path(record.output_dir) / "mlflow_run_id"
    deadline = time.monotonic() + 90
    while not _metric_steps(record.output_dir):  # training, with its MLflow run open
        assert time.monotonic() < deadline, _log(record)[-3000:]
        time.sleep(0.3)
    pids = {_pid_of(record, 0), _pid_of(record, 1)}
    for pid in pids:  # the job's runtime_env reaches the Train workers, which Ray Train starts
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"MAECTL_JOB={record.handle}".encode() in environ
    started = time.monotonic()
    assert main(["cancel", record.handle]) == 0
    took = time.monotonic() - started
    assert RayBackend().status(record).state == JobState.CANCELLED
    from orchestrator.store import open_store

    assert open_store().get(record.handle).state == JobState.CANCELLED
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "the Train workers outlived the cancelled job"
        time.sleep(0.5)
    _, runs = _mlflow_runs(ray_job_env["uri"], ray_job_env["experiment"])
    assert len(runs) == 1 and runs[0].info.run_id == run_id_file.read_text().strip()
    assert runs[0].info.status == "KILLED"
    print(f"\n[ray] cancel: STOPPED -> cancelled in {took:.1f}s, MLflow run KILLED")


@pytest.mark.integration
def test_a_failing_job_that_no_retry_fixes_ends_at_once(ray_job_env):
    # Valid for maectl, fails on every rank at the same step, after rank 0 opened its MLflow run:
    # a learning rate that makes the loss non-finite (100, the largest lr maectl accepts: nan by step 3).
    # A non-finite loss comes back on every attempt: no restart, although max_failures allows 3.
    record = _submit([*ray_job_env["overrides"], "train.epochs=1", "optim.lr=100", "optim.warmup_epochs=0",
                      "ray.max_failures=3"])
    status = _wait(record, {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}, timeout=150)
    log = _log(record)
    assert status.state == JobState.FAILED and status.exit_code == ExitCode.NON_FINITE_LOSS, log[-3000:]
    assert status.message
    assert log.count("ray worker rank 0/2") == 1, "retried an error that no retry fixes"
    assert re.search(r"(loss|gradient norm) is (nan|inf)", log), log[-3000:]
    assert "failed, not retried (exit code 4 (non-finite loss)" in log
    _, runs = _mlflow_runs(ray_job_env["uri"], ray_job_env["experiment"])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
