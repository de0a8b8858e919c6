"""Pipelines: a pretraining's follow-ups start from its final checkpoint once it completed OK.

The `pipeline:` block and its checks (before anything is submitted), the dry-run pinned by a
golden file, the local backend's dependency waiter, a real local pretrain -> linear probe against
the stack's MLflow server (the probe's accuracy lands in the pretraining's experiment and run),
and the Ray waiter on the stack's Ray head giving up after a failed dependency."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.backends import JobState
from orchestrator.errors import UsageError
from orchestrator.locations import PROJECT_ROOT
from orchestrator.store import JobStore
from tests.fixtures.plans import check_golden, plan_part, rendered_specs
from tests.test_orchestrator_cli import assert_no_secrets, clean_env, jobs_recorded, maectl

COMMON = """\
resources: {{nodes: 1, gpus_per_node: 0, tasks_per_node: 1, cpus_per_task: 1, time_limit_min: 10}}
data: {{url: {data}, img_size: 32, batch_size: 50, num_workers: 0, shuffle_buffer: 64}}
checkpoint: {{keep_every_epochs: null}}
tracking: {{enabled: {tracking}}}
"""
PRETRAIN = """\
description: a tiny pretraining with a follow-up
model: {{name: mae_vit_micro_patch4_32, norm_pix_loss: true}}
optim: {{lr: 2.0e-3, warmup_epochs: 1}}
train: {{epochs: 1, log_every: 1, max_steps: 2}}
pipeline: {{then: [{then}]}}
"""
# One epoch of 8 steps (400 demo images / 50), then the val split: the probe's eval/top1.
LINPROBE = """\
description: a tiny linear probe
task: linprobe
model: {{name: {model}}}
optim: {{name: lars, base_lr: 0.1, weight_decay: 0.0, warmup_epochs: 0}}
train: {{epochs: 1, log_every: 4}}
finetune: {{num_classes: 10, global_pool: token, mixup: 0.0, cutmix: 0.0, label_smoothing: 0.0}}
"""


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    # SLURM_CONF / RAY_ADDRESS unset: no SLURM or Ray is detected, the default backend is local here.
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "MLFLOW_TRACKING_URI", "MAECTL_JOBS_PATH", "SLURM_CONF", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def write_pipeline(folder: Path, data: str, *, then: str = "tiny-linprobe", model: str = "mae_vit_micro_patch4_32",
                   tracking: bool = False) -> tuple[str, str]:
    common = COMMON.format(data=data, tracking=str(tracking).lower())
    pretrain, linprobe = folder / "tiny-pretrain.yaml", folder / "tiny-linprobe.yaml"
    pretrain.write_text(PRETRAIN.format(then=then) + common)
    linprobe.write_text(LINPROBE.format(model=model) + common)
    return str(pretrain), str(linprobe)


# -- the block and the checks --------------------------------------------------------------------
@pytest.mark.parametrize("block, key, words", [
    ("pipeline: [linprobe-vit-b]", "pipeline", "expected a mapping with `then"),
    ("pipeline: {next: [linprobe-vit-b]}", "pipeline.next", "unknown key"),
    ("pipeline: {then: [{overrides: [a=1]}]}", "pipeline.then[0]", "expected an experiment name"),
    ("pipeline: {then: [{experiment: linprobe-vit-b, overrides: [nonsense]}]}", "pipeline.then[0].overrides", "key=value"),
])
def test_a_bad_pipeline_block_names_file_and_key(isolated, demo_shards, block, key, words):
    from orchestrator.experiments import resolve

    path = isolated / "p.yaml"
    path.write_text(PRETRAIN.format(then="x").replace("pipeline: {then: [x]}\n", block + "\n") + COMMON.format(data=demo_shards, tracking="false"))
    with pytest.raises(UsageError) as err:
        resolve(str(path))
    assert str(err.value).startswith(f"{path}: {key}: ") and words in str(err.value)


def test_followups_are_prepared_with_the_final_checkpoint_and_the_pretrainings_experiment(isolated, demo_shards):
    from orchestrator.pipelines import placeholder_dependency, prepare_followups
    from orchestrator.submission import prepare

    pretrain_file, linprobe_file = write_pipeline(isolated, demo_shards, tracking=True,
                                                  then=f"{{experiment: {isolated / 'tiny-linprobe.yaml'}, overrides: [train.epochs=2]}}")
    pretrain = prepare(pretrain_file, [], dry_run=True)
    [followup] = prepare_followups(pretrain, dry_run=True)
    resolved = followup.prepared.resolved
    assert resolved.run.checkpoint.init_from == f"{pretrain.resolved.run.output_dir}/final/mae.pt"
    assert resolved.run.train.epochs == 2 and resolved.spec.backend == "local"
    assert followup.prepared.request.spec.tracking.experiment == "tiny-pretrain"  # the pretraining's MLflow experiment
    assert [d.handle for d in followup.prepared.request.depends_on] == [placeholder_dependency(pretrain).handle]


def test_a_followup_that_cannot_load_the_encoder_stops_the_submission(tmp_path, demo_shards):
    pretrain_file, linprobe_file = write_pipeline(tmp_path, demo_shards, then=str(tmp_path / "tiny-linprobe.yaml"), model="mae_vit_base_patch16")
    result = maectl(["submit", pretrain_file, "--backend", "local"], clean_env(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"maectl: error: {pretrain_file}: pipeline.then[0] ({linprobe_file}): {linprobe_file}: model.name: ")
    assert "does not match the encoder" in message and "embed_dim 768 vs 64" in message
    assert jobs_recorded(tmp_path) == 0 and not (tmp_path / "out").exists()


def test_a_missing_followup_stops_the_submission(isolated, demo_shards):
    from orchestrator.pipelines import submit

    pretrain_file, _ = write_pipeline(isolated, demo_shards, then="linprobe-vit-nothere")
    with pytest.raises(UsageError, match=r"pipeline.then\[0\] \(linprobe-vit-nothere\): unknown experiment"):
        submit(pretrain_file, [])
    assert not (isolated / "home" / "jobs").exists() and JobStore(isolated / "home" / "jobs.db").count() == 0


def test_a_backend_without_dependencies_refuses_pipelines(isolated, demo_shards, monkeypatch):
    from orchestrator.backends.local import LocalBackend
    from orchestrator.pipelines import prepare_followups
    from orchestrator.submission import prepare

    pretrain_file, _ = write_pipeline(isolated, demo_shards, then=str(isolated / "tiny-linprobe.yaml"))
    monkeypatch.setattr(LocalBackend, "supports_dependencies", False)
    with pytest.raises(UsageError, match=r"pipeline: the local backend cannot start jobs after others yet.*pipeline=null"):
        prepare_followups(prepare(pretrain_file, [], dry_run=True), dry_run=True)


PIPELINE_GOLDEN = ["submit", "pretrain-vit-tiny-demo", "pipeline.then=[linprobe-vit-tiny-demo]", "--backend", "local", "--dry-run"]


def test_dry_run_matches_golden_and_submits_nothing(tmp_path):
    result = maectl(PIPELINE_GOLDEN, clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout + result.stderr)
    check_golden("pipeline_dry_run_local.txt", plan_part(result.stdout))
    text = result.stdout
    assert "# === then[0]: linprobe-vit-tiny-demo, after <handle> completes OK, from <output_root>/pretrain-vit-tiny-demo/<handle>/final/mae.pt" in text
    assert "-m orchestrator.backends.local after --marker" in text
    pretrain, linprobe = rendered_specs(text)
    assert linprobe["resolved"]["checkpoint"]["init_from"] == "<output_root>/pretrain-vit-tiny-demo/<handle>/final/mae.pt"
    assert linprobe["pipeline"] == {"after": "<handle>", "after_output_dir": "<output_root>/pretrain-vit-tiny-demo/<handle>",
                                    "stage": "linprobe-vit-tiny-demo"}
    assert linprobe["tracking"]["experiment"] == pretrain["tracking"]["experiment"] == "pretrain-vit-tiny-demo"
    assert "pipeline" not in pretrain and linprobe["resolved"]["task"] == "linprobe"
    assert jobs_recorded(tmp_path) == 0 and not (tmp_path / "home").exists() and not (tmp_path / "out").exists()


# -- the local dependency waiter -----------------------------------------------------------------
def _waiter(tmp_path: Path, returncode: int | None, pid: str = "1", ticks: str = "1") -> subprocess.CompletedProcess:
    exit_file, marker = tmp_path / "dep-exit.json", tmp_path / "waiting"
    marker.touch()
    if returncode is not None:
        exit_file.write_text(json.dumps({"returncode": returncode, "finished_at": time.time()}))
    return subprocess.run([sys.executable, "-m", "orchestrator.backends.local", "after", "--marker", str(marker), "--wait", "local-dep001",
                           str(exit_file), pid, ticks, "--", sys.executable, "-c", "print('the follow-up ran')"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)


def test_waiter_runs_the_job_after_its_dependency_completed(tmp_path):
    done = _waiter(tmp_path, 0)
    assert done.returncode == 0 and "the follow-up ran" in done.stdout and "local-dep001 completed: starting" in done.stdout
    assert not (tmp_path / "waiting").exists()


@pytest.mark.parametrize("returncode, meaning", [(1, "failed (an application error)"), (-15, "terminated (SIGTERM)"), (None, "killed by SIGKILL")])
def test_waiter_never_runs_the_job_after_a_failed_dependency(tmp_path, returncode, meaning):
    from mae_core.exitcodes import ExitCode

    # None: no exit file and the recorded pid/start time is not a live process (a vanished supervisor).
    failed = _waiter(tmp_path, returncode, pid="999999999", ticks="1")
    assert failed.returncode == ExitCode.DEPENDENCY_FAILED and "the follow-up ran" not in failed.stdout
    assert f"not run: local-dep001 did not complete ({meaning})" in failed.stdout


# -- a real pipeline -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
def test_local_pretrain_then_linprobe_reports_to_the_pretraining(tmp_path, demo_shards, mlflow_tracking_uri):
    from mlflow.tracking import MlflowClient

    env = clean_env(tmp_path)
    pretrain_file, _ = write_pipeline(tmp_path, demo_shards, then=str(tmp_path / "tiny-linprobe.yaml"), tracking=True)
    experiment = f"tiny-pipeline-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    result = maectl(["submit", pretrain_file, f"tracking.uri={mlflow_tracking_uri}", f"tracking.experiment={experiment}", "--backend", "local", "--wait"],
                    env, timeout=400)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    pre_handle = re.search(r"submitted (local-[0-9a-f]{6})", result.stdout)[1]
    lin_handle = re.search(r"then\s+(local-[0-9a-f]{6})", result.stdout)[1]
    print(f"local pretrain -> linprobe: {elapsed:.0f} s from `maectl submit` to both completed")

    store = JobStore(tmp_path / "home" / "jobs.db")
    pre, lin = store.get(pre_handle), store.get(lin_handle)
    assert pre.state is JobState.COMPLETED and lin.state is JobState.COMPLETED and lin.after == pre_handle
    final = f"{pre.output_dir}/final/mae.pt"
    assert Path(final).exists()
    assert pre.finished_at <= lin.finished_at
    log = maectl(["logs", lin_handle], env).stdout
    assert f"waiting for {pre_handle}" in log and f"initialised from {final}" in log

    client = MlflowClient(mlflow_tracking_uri)
    pre_run_id = (Path(pre.output_dir) / "mlflow_run_id").read_text().strip()
    lin_run_id = (Path(lin.output_dir) / "mlflow_run_id").read_text().strip()
    pre_run, lin_run = client.get_run(pre_run_id), client.get_run(lin_run_id)
    assert client.get_experiment(lin_run.info.experiment_id).name == experiment == client.get_experiment(pre_run.info.experiment_id).name
    assert lin_run.data.params["checkpoint.init_from"] == final and lin_run.data.params["task"] == "linprobe"
    assert lin_run.data.tags["mlflow.parentRunId"] == pre_run_id and lin_run.data.tags["pipeline.after"] == pre_handle
    top1 = lin_run.data.metrics["eval/top1"]
    assert 0.0 <= top1 <= 100.0
    assert pre_run.data.metrics["tiny-linprobe/eval/top1"] == top1  # the pretraining's run has its probe's accuracy
    assert pre_run.data.tags["pipeline.tiny-linprobe.run_id"] == lin_run_id

    status = maectl(["status", pre_handle], env).stdout
    assert f"{lin_handle} tiny-linprobe: completed, eval/top1 {top1:.4g}" in " ".join(status.split())


def test_local_status_of_a_waiting_and_of_a_never_run_followup(tmp_path):
    """What `maectl status` says while the waiter waits (PENDING) and after it gave up (CANCELLED)."""
    from orchestrator.backends.local import EXIT_FILE, WAITING_FILE, LocalBackend, _process_start_ticks
    from orchestrator.store import JobRecord

    record = JobRecord(handle="local-lin001", experiment="lin", source="s", backend="local", state=JobState.PENDING, output_dir="o",
                       job_dir=str(tmp_path), after="local-pre001",
                       info={"pid": os.getpid(), "start_ticks": _process_start_ticks(os.getpid()), "after": ["local-pre001"]})
    (tmp_path / WAITING_FILE).touch()
    waiting = LocalBackend().status(record)
    assert waiting.state is JobState.PENDING and waiting.message == "waiting for local-pre001 to complete"
    (tmp_path / WAITING_FILE).unlink()
    assert LocalBackend().status(record).state is JobState.RUNNING
    (tmp_path / EXIT_FILE).write_text(json.dumps({"returncode": 6, "finished_at": 1.0}))
    never = LocalBackend().status(record)
    assert never.state is JobState.CANCELLED and never.message == "not run: local-pre001 did not complete"


# -- the Ray waiter ------------------------------------------------------------------------------
@pytest.mark.integration
def test_ray_followup_of_a_failed_job_is_not_run(tmp_path, demo_shards, ray_address, monkeypatch):
    """The Ray waiter on the real head: its dependency, a Ray Job that fails at once, stands in
    for a failed pretraining (a real one takes a minute here); the follow-up never starts its
    TorchTrainer and shows as cancelled. The success path is the same waiter exec-ing the
    entrypoint (docs/usage.md has the measured run)."""
    from ray.job_submission import JobSubmissionClient

    from orchestrator.backends.ray import RayBackend
    from orchestrator.pipelines import launch_followups, prepare_followups
    from orchestrator.store import JobRecord, open_store
    from orchestrator.submission import prepare, refresh

    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("RAY_ADDRESS", ray_address)
    pretrain_file, _ = write_pipeline(tmp_path, demo_shards, then=str(tmp_path / "tiny-linprobe.yaml"))
    store = open_store()
    pretrain = prepare(pretrain_file, [], backend="ray", store=store)
    followups = prepare_followups(pretrain, store=store)
    entrypoint = f"{sys.executable} -c 'import sys; sys.exit(1)'"
    JobSubmissionClient(ray_address).submit_job(entrypoint=entrypoint, submission_id=pretrain.request.handle)
    dependency = JobRecord(handle=pretrain.request.handle, experiment="tiny-pretrain", source=pretrain_file, backend="ray",
                           state=JobState.PENDING, output_dir=pretrain.resolved.run.output_dir, job_dir=str(pretrain.request.job_dir),
                           native_id=pretrain.request.handle)
    [record] = launch_followups(dependency, pretrain, followups, store)
    assert record.after == pretrain.request.handle and record.info["after"] == [pretrain.request.handle]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (record := refresh(store.get(record.handle), store)).state.terminal:
        time.sleep(1)
    assert record.state is JobState.CANCELLED, (record.state, record.message)
    assert record.message == f"not run: {pretrain.request.handle} did not succeed"
    logs = "".join(RayBackend().logs(record))
    assert f"not run: {pretrain.request.handle} failed" in logs and "TorchTrainer" not in logs


# -- SLURM: afterok --------------------------------------------------------------------------------
def test_slurm_dry_run_of_a_followup_has_afterok(tmp_path):
    result = maectl(["submit", "pretrain-vit-tiny-demo", "pipeline.then=[linprobe-vit-tiny-demo]", "--backend", "slurm", "--dry-run"],
                    clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    pretrain, followup = result.stdout.split("# === then[0]: ")
    assert "--dependency" not in pretrain
    assert "#SBATCH --dependency='afterok:<job id of <handle>>'" in followup and "#SBATCH --kill-on-invalid-dep=yes" in followup


@pytest.mark.integration
def test_slurm_followup_of_a_failed_job_is_cancelled_by_slurm(tmp_path, demo_shards, slurm_cluster, monkeypatch):
    """afterok + kill-on-invalid-dep on the real single-node SLURM: the dependency, an sbatch job
    that fails at once, stands in for a failed pretraining."""
    from orchestrator.pipelines import launch_followups, prepare_followups
    from orchestrator.store import JobRecord, open_store
    from orchestrator.submission import prepare, refresh

    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    pretrain_file, _ = write_pipeline(tmp_path, demo_shards, then=str(tmp_path / "tiny-linprobe.yaml"))
    store = open_store()
    pretrain = prepare(pretrain_file, [], backend="slurm", store=store)
    followups = prepare_followups(pretrain, store=store)
    failing = subprocess.run(["sbatch", "--parsable", f"--partition={slurm_cluster.partition}", "--time=1", f"--output={tmp_path}/dep-%j.out",
                              "--wrap", "exit 1"], capture_output=True, text=True, timeout=30)
    assert failing.returncode == 0, failing.stderr
    job_id = failing.stdout.strip().split(";")[0]
    dependency = JobRecord(handle=pretrain.request.handle, experiment="tiny-pretrain", source=pretrain_file, backend="slurm",
                           state=JobState.PENDING, output_dir=pretrain.resolved.run.output_dir, job_dir=str(pretrain.request.job_dir),
                           native_id=job_id)
    [record] = launch_followups(dependency, pretrain, followups, store)
    assert record.after == pretrain.request.handle and record.native_id
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (record := refresh(store.get(record.handle), store)).state.terminal:
        time.sleep(1)
    assert record.state is JobState.CANCELLED, (record.state, record.message)
    assert not Path(record.output_dir, "mlflow_run_id").exists()  # never ran


# -- site settings carry over to the follow-ups ----------------------------------------------------
def test_a_followup_inherits_the_submissions_site_settings(tmp_path):
    """Rendered for SLURM: each site key given to `maectl submit` reaches the follow-up's plan
    (its sbatch script or its job spec); the follow-up's own file still wins over the pretraining's file."""
    site = ["resources.cpus_per_task=1", "resources.partition=site-part", "resources.account=site-acct", "resources.mem_gb=3",
            "slurm.job_folder=/shared/site-jobs", "ray.address=http://10.1.2.3:8265", "tracking.uri=http://127.0.0.1:5999",
            "resources.time_limit_min=45"]
    result = maectl(["submit", "pretrain-vit-tiny-demo", "pipeline.then=[linprobe-vit-tiny-demo]", *site, "--backend", "slurm", "--dry-run"],
                    clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    pretrain_text, followup_text = result.stdout.split("# === then[0]: ")
    pretrain, followup = rendered_specs(result.stdout)
    for text in (pretrain_text, followup_text):
        for line in ("#SBATCH --cpus-per-task=1", "#SBATCH --partition=site-part", "#SBATCH --account=site-acct", "#SBATCH --mem=3GB",
                     "#SBATCH --time=45"):
            assert line in text.splitlines(), (line, text)
    assert "# --- file /shared/site-jobs/<handle>/job.yaml ---" in followup_text
    for spec in (pretrain, followup):
        resolved = spec["resolved"]
        assert resolved["resources"]["cpus_per_task"] == 1 and resolved["resources"]["partition"] == "site-part"
        assert resolved["resources"]["account"] == "site-acct" and resolved["resources"]["mem_gb"] == 3.0
        assert resolved["slurm"]["job_folder"] == "/shared/site-jobs" and resolved["ray"]["address"] == "http://10.1.2.3:8265"
        assert spec["tracking"]["uri"] == "http://127.0.0.1:5999" and resolved["tracking"]["uri"] == "http://127.0.0.1:5999"
    assert followup["resolved"]["task"] == "linprobe"
    assert "resources.partition=site-part" in followup["overrides"]  # shown as set by the pipeline


def test_site_settings_of_the_pretrainings_file_yield_to_the_followups_file(isolated, demo_shards):
    from orchestrator.pipelines import prepare_followups, site_settings
    from orchestrator.submission import prepare

    pretrain_file, linprobe_file = write_pipeline(isolated, demo_shards, then=str(isolated / "tiny-linprobe.yaml"))
    Path(pretrain_file).write_text(Path(pretrain_file).read_text() + "slurm: {job_folder: /shared/from-pretrain-file}\n")
    Path(linprobe_file).write_text(Path(linprobe_file).read_text().replace("time_limit_min: 10", "time_limit_min: 20"))
    pretrain = prepare(pretrain_file, ["resources.cpus_per_task=2"], dry_run=True)
    inherited = site_settings(pretrain.resolved, pretrain.resolved.pipeline.then[0])
    # From the pretraining's file, not set by the follow-up's: inherited. Set by both files: the follow-up's.
    assert inherited["slurm.job_folder"] == "/shared/from-pretrain-file" and "resources.time_limit_min" not in inherited
    assert inherited["resources.cpus_per_task"] == 2  # the command line's
    [followup] = prepare_followups(pretrain, dry_run=True)
    spec = followup.prepared.resolved.spec
    assert spec.slurm.job_folder == "/shared/from-pretrain-file" and spec.resources.time_limit_min == 20
    assert spec.resources.cpus_per_task == 2
