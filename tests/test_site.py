"""Site files: found in order, their defaults layered between the experiment and the command line,
datasets by name, site folders that shadow base files, and the detected default backend."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import site as site_module
from orchestrator.errors import UsageError
from orchestrator.experiments import ExperimentError, resolve
from orchestrator.locations import PROJECT_ROOT


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def site_file(tmp_path, monkeypatch):
    """Point MAECTL_SITE at a file the test writes."""
    path = tmp_path / "site.yaml"

    def use(text: str) -> Path:
        _write(path, text if "datasets:" in text else text + "datasets: {imagenet: s3://imagenet/wds}\n")
        monkeypatch.setenv("MAECTL_SITE", str(path))
        return path

    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    return use


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MAECTL_SITE")
    assert site_module.site_path() == PROJECT_ROOT / "site.yaml"  # the checkout's, last
    user = _write(tmp_path / ".config" / "maectl" / "site.yaml", "backend: ray\n")
    assert site_module.site_path() == user
    explicit = _write(tmp_path / "elsewhere.yaml", "backend: slurm\n")
    monkeypatch.setenv("MAECTL_SITE", str(explicit))
    assert site_module.site_path() == explicit and site_module.active().config.backend == "slurm"
    monkeypatch.setenv("MAECTL_SITE", "")
    assert site_module.site_path() is None
    monkeypatch.setenv("MAECTL_SITE", str(tmp_path / "missing.yaml"))
    with pytest.raises(UsageError, match="no such site file"):
        site_module.site_path()


def test_defaults_sit_between_the_experiment_and_the_command_line(site_file):
    site_file("backend: slurm\ndefaults:\n  resources: {partition: gpu, account: vision, nodes: 2, gpus_per_node: 0, tasks_per_node: 1}\n"
              "  slurm: {job_folder: /shared/jobs}\n  tracking: {uri: http://mlflow.example:5000}\n")
    r = resolve("pretrain-vit-h-1600ep", check_data=False)
    assert r.spec.backend == "slurm" and "site file" in r.backend_reason
    assert (r.spec.resources.partition, r.spec.resources.account, r.spec.resources.nodes) == ("gpu", "vision", 2)
    assert r.spec.resources.gpus_per_node == 0  # the site wins over jobs/base/gpu-cluster.yaml's 8
    assert r.spec.slurm.job_folder == "/shared/jobs" and r.spec.tracking.uri == "http://mlflow.example:5000"
    r = resolve("pretrain-vit-h-1600ep", ["resources.partition=debug"], backend="local", check_data=False)
    assert r.spec.resources.partition == "debug" and r.spec.backend == "local" and r.backend_reason == "--backend"


def test_an_error_in_the_site_defaults_names_the_site_file(site_file):
    path = site_file("defaults:\n  resources: {nodes: 0}\n")
    with pytest.raises(ExperimentError) as caught:
        resolve("pretrain-vit-h-1600ep", check_data=False)
    assert caught.value.file == str(path) and caught.value.key == "resources.nodes"
    site_file("defaults:\n  resourcez: {nodes: 2}\n")
    with pytest.raises(ExperimentError, match="resourcez"):
        resolve("pretrain-vit-h-1600ep", check_data=False)
    site_file("bakend: slurm\n")
    with pytest.raises(UsageError, match="bakend.*did you mean 'backend'"):
        resolve("pretrain-vit-h-1600ep", check_data=False)


def test_datasets_by_name(site_file):
    site_file("datasets: {imagenet: /shared/datasets/imagenet-wds}\n")
    assert resolve("pretrain-vit-b-800ep", check_data=False).run.data.url == "/shared/datasets/imagenet-wds"
    site_file("datasets: {other: s3://b/x}\n")
    with pytest.raises(ExperimentError, match="dataset 'imagenet' has no location on this site.*known: other"):
        resolve("pretrain-vit-b-800ep", check_data=False)


def test_a_site_folder_shadows_base_files(site_file, tmp_path):
    folder = tmp_path / "site-jobs"
    _write(folder / "base" / "pretrain.yaml", (PROJECT_ROOT / "jobs/base/pretrain.yaml").read_text().replace("  epochs: 800\n", "  epochs: 800\n  seed: 1234\n"))
    site_file(f"jobs_path: [{folder}]\n")
    r = resolve("pretrain-vit-b-800ep", check_data=False)
    assert r.run.train.seed == 1234  # jobs/pretrain/pretrain-vit-b-800ep.yaml extends base/pretrain.yaml: the site's


def test_detection_without_schedulers(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo here
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert site_module.detect_backend()[0] == "local"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert site_module.detect_backend() == ("ray", "detected: RAY_ADDRESS is set")


def test_submit_names_the_detected_backend_when_no_site_says(site_file, tmp_path, monkeypatch):
    site_file("datasets: {}\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    r = resolve("pretrain-vit-tiny-demo", check_data=False)
    assert r.spec.backend == "local" and r.backend_reason.startswith("detected")


@pytest.mark.integration
@pytest.mark.skipif(not shutil.which("sinfo") or not os.environ.get("SLURM_CONF"), reason="needs the dev stack's SLURM")
def test_site_init_reads_the_cluster(tmp_path):
    target = tmp_path / "site.yaml"
    env = {**os.environ, "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "site", "init", "--output", str(target)], env=env,
                            capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    import yaml

    written = yaml.safe_load(target.read_text())
    partition = os.environ.get("MAECTL_SLURM_PARTITION", "debug")
    assert written["backend"] == "slurm" and written["defaults"]["resources"]["partition"] == partition
    again = subprocess.run([sys.executable, "-m", "orchestrator.cli", "site", "init", "--output", str(target)], env=env,
                           capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert again.returncode == 2 and "--force" in again.stderr
    shown = subprocess.run([sys.executable, "-m", "orchestrator.cli", "site", "show"], env={**env, "MAECTL_SITE": str(target)},
                           capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert shown.returncode == 0 and f"partition: {partition}" in shown.stdout
