"""MLflow tracking against a real `mlflow server`: params, tags, per-step metrics, artifacts;
a restarted job (same output_dir) continues the same run; no credentials anywhere."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from orchestrator.redact import REDACTED, is_secret_name, scrub_text, scrub_tree
from tests.test_orchestrator_cli import SECRET_KEY, URI_PASSWORD, assert_no_secrets, clean_env, maectl
from tests.test_orchestrator_local import tiny_job


def test_secret_names_and_values_are_redacted(monkeypatch):
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "api_key", "password"):
        assert is_secret_name(name), name
    for name in ("keep_last", "knn_k", "keep_every_epochs", "data.url", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        assert not is_secret_name(name), name
    monkeypatch.setenv("HF_TOKEN", "tok-" + "z" * 12)
    text = scrub_text("https://bob:hunter2hunter2@host/x AKIA" + "A" * 16 + " tok-" + "z" * 12)
    assert text == f"https://bob:{REDACTED}@host/x {REDACTED} {REDACTED}"
    assert scrub_tree({"data": {"url": "s3://b/p", "secret_key": "abc"}}) == {"data": {"url": "s3://b/p", "secret_key": REDACTED}}


def test_params_are_flattened_and_capped():
    from orchestrator.tracking import MAX_PARAM_VALUE, flatten_params

    params = flatten_params({"optim": {"betas": [0.9, 0.95], "lr": None}, "resources": {"sbatch_options": {}}, "password": "x", "d": "y" * 7000})
    assert params == {"optim.betas": "[0.9, 0.95]", "optim.lr": "None", "resources.sbatch_options": "{}", "password": REDACTED, "d": "y" * MAX_PARAM_VALUE}


@pytest.mark.slow
@pytest.mark.integration
def test_mlflow_round_trip_and_restart_continues_the_run(tmp_path, demo_shards, mlflow_tracking_uri):
    from mlflow.tracking import MlflowClient

    host = re.sub(r"^http://", "", mlflow_tracking_uri)
    uri_with_password = f"http://alice:{URI_PASSWORD}@{host}"
    env = clean_env(tmp_path, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    job = tiny_job(tmp_path, demo_shards, tracking=True)
    experiment = f"tiny-test-job-{uuid.uuid4().hex[:8]}"  # the server outlives test sessions
    first = maectl(["submit", job, "--backend", "local", f"tracking.uri={uri_with_password}", f"tracking.experiment={experiment}", "--wait"], env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    handle = re.search(r"submitted (local-[0-9a-f]{6})", first.stdout)[1]
    output_dir = tmp_path / "out" / "tiny-test-job" / handle
    run_id = (output_dir / "mlflow_run_id").read_text().strip()

    client = MlflowClient(mlflow_tracking_uri)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED" and run.info.run_name == handle
    params, tags = run.data.params, run.data.tags
    assert params["model.name"] == "mae_vit_micro_patch4_32" and params["train.epochs"] == "1"
    assert params["data.batch_size"] == "50" and params["resources.tasks_per_node"] == "1" and params["backend"] == "local"
    assert tags["backend"] == "local" and tags["handle"] == handle and tags["user"] and tags["host"]
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"])
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == list(range(1, 9))
    assert client.get_metric_history(run_id, "epoch/loss")[0].step == 8
    artifacts = {a.path for folder in ("config", "reconstructions", "encoder") for a in client.list_artifacts(run_id, folder)}
    assert {"config/resolved.yaml", "reconstructions/reconstruction-epoch0001.png", "encoder/encoder_timm.pt"} <= artifacts

    _assert_mlflow_native_records(client, mlflow_tracking_uri, run_id, experiment, output_dir, demo_shards)

    # Started again on the same output folder (a requeue, a restart): the checkpoint resumes at
    # step 8 and the same run continues from there.
    second = maectl(["submit", job, "--backend", "local", f"tracking.uri={uri_with_password}", f"tracking.experiment={experiment}", f"output_dir={output_dir}",
                     "train.epochs=2", "--wait"], env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert (output_dir / "mlflow_run_id").read_text().strip() == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumes"] == "1"
    assert "train.epochs" in run.data.tags["params_changed_on_resume"] and run.data.params["train.epochs"] == "1"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == list(range(1, 17)), "metrics continue from the resumed step"
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # No credential anywhere: params, tags, the uploaded config, logs, what maectl prints.
    local_artifact = client.download_artifacts(run_id, "config/resolved.yaml", str(tmp_path / "dl"))
    second_handle = re.search(r"submitted (local-[0-9a-f]{6})", second.stdout)[1]
    logs = "".join(maectl(["logs", h], env).stdout for h in (handle, second_handle))
    status = maectl(["status", handle], env).stdout
    everything = "\n".join([*run.data.params.values(), *run.data.tags.values(), Path(local_artifact).read_text(),
                            first.stdout, first.stderr, second.stdout, second.stderr, logs, status])
    assert_no_secrets(everything)
    assert SECRET_KEY not in everything and "alice:" + REDACTED in run.data.params["tracking.uri"]


@pytest.mark.integration
def test_resumed_sink_skips_replayed_steps_and_keeps_params(tmp_path, mlflow_tracking_uri):
    """Between a checkpoint and a kill, steps are logged that the resumed job logs again."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import open_run

    spec = {"handle": "local-unit01", "backend": "local", "experiment": "unit", "source": "jobs/unit.yaml", "overrides": [],
            "submitted": {"user": "u", "git_commit": None}, "tracking": {"uri": mlflow_tracking_uri, "experiment": "maectl-unit-tests"},
            "resolved": {"train": {"epochs": 1}, "checkpoint": {"resume": "auto"}}}
    first = open_run(spec, str(tmp_path))
    for step in range(1, 6):
        first.log_metrics({"train/loss": 1.0 / step}, step)
    first.close("KILLED")
    spec["resolved"]["train"]["epochs"] = 2
    again = open_run(spec, str(tmp_path))
    assert again.run_id == first.run_id
    for step in range(3, 8):  # resumed from a checkpoint at step 2
        again.log_metrics({"train/loss": 1.0 / step}, step)
    again.close()
    client = MlflowClient(mlflow_tracking_uri)
    assert [m.step for m in client.get_metric_history(first.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6, 7]
    run = client.get_run(first.run_id)
    assert run.data.params["train.epochs"] == "1" and run.data.tags["params_changed_on_resume"] == "train.epochs"
    spec["resolved"]["checkpoint"]["resume"] = "never"
    fresh = open_run(spec, str(tmp_path))
    assert fresh.run_id != first.run_id
    fresh.close()


def _assert_mlflow_native_records(client, uri, run_id, experiment, output_dir, shards):
    """What MLflow's users look for: the encoder as a registered model that loads and runs, the
    shards as the run's dataset input (digest from the manifest), MLflow's own system metrics."""
    import mlflow
    import mlflow.pytorch
    import torch

    from mae_core.data.manifest import read_manifest
    from mae_core.weights import load_model
    from orchestrator.tracking.artifacts import manifest_digest

    version = client.get_model_version(experiment, "1")
    assert version.run_id == run_id and version.status == "READY"
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(f"models:/{experiment}/1")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
    assert info.saved_input_example_info is not None
    encoder = mlflow.pytorch.load_model(f"models:/{experiment}/1")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = encoder(images)
        expected = load_model(output_dir / "final" / "mae.pt").eval().extract_features(images, pool="cls")
    torch.testing.assert_close(features, expected)  # the pretrained encoder, not a fresh one

    run = client.get_run(run_id)
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    train = next(d for name, d in inputs.items() if name.endswith(":train"))
    assert train.dataset.digest == manifest_digest(read_manifest(shards, "train"))
    assert str(shards).rstrip("/") in train.dataset.source and train.tags[0].value == "training"
    assert '"num_samples": 400' in train.dataset.profile
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, sorted(run.data.metrics)
