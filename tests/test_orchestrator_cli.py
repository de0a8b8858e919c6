"""The maectl command line in subprocesses: fast --help, exit code 2 with file + key on bad
input (and nothing recorded), dry-run renderings pinned by golden files, no secrets shown."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.locations import PROJECT_ROOT
from tests.fixtures.plans import check_golden, plan_part, rendered_specs

GOLDEN = Path(__file__).parent / "golden"
# Fake credentials: they must never appear in anything maectl prints or records.
SECRET_KEY = "sentinel-secret-" + "x" * 16
ACCESS_KEY_ID = "AKIA" + "TESTSENTINEL0000"
URI_PASSWORD = "uri-pass-" + "y" * 8


def clean_env(tmp_path: Path, **extra) -> dict[str, str]:
    """A controlled environment: private store and outputs, fake credentials, no stack variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "MAECTL_", "FSSPEC_", "S3_", "HF_", "NCCL_", "CUDA_VISIBLE"))}
    env.update({
        "MAECTL_HOME": str(tmp_path / "home"), "MAECTL_OUTPUT_ROOT": str(tmp_path / "out"), "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "COLUMNS": "200",
    })
    env.update(extra)
    return env


def maectl(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_no_secrets(text: str) -> None:
    for secret in (SECRET_KEY, ACCESS_KEY_ID, URI_PASSWORD):
        assert secret not in text


def jobs_recorded(tmp_path: Path) -> int:
    db = tmp_path / "home" / "jobs.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def test_help_is_fast_and_imports_nothing_heavy(tmp_path):
    code = ("import sys, time; t = time.perf_counter(); import orchestrator.cli as c; c.build_parser(); "
            "print(time.perf_counter() - t); print(sorted(m for m in ('torch', 'mlflow', 'ray', 'submitit', 'mae_core.engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1] == "[]"
    start = time.perf_counter()
    help_run = maectl(["--help"], clean_env(tmp_path))
    elapsed = time.perf_counter() - start
    assert help_run.returncode == 0 and "submit" in help_run.stdout and "status" in help_run.stdout
    print(f"maectl --help: {elapsed:.2f} s in a subprocess (parser built in {float(out[0]) * 1000:.0f} ms)")
    assert elapsed < 5  # loose: shared CPUs; the import check above is the real guard


@pytest.mark.parametrize("args, file, key", [
    (["submit", "pretrain-vit-b-800ep", "train.epoch=3"], "jobs/pretrain/pretrain-vit-b-800ep.yaml", "train.epoch"),
    (["submit", "pretrain-vit-b-800ep", "resources.nodes=2", "data.batch_size=100"], "jobs/base/pretrain.yaml", "global_batch"),
    (["submit", "finetune-vit-l", "checkpoint.init_from=null"], "jobs/finetune/finetune-vit-l.yaml", "checkpoint.init_from"),
    (["submit", "pretrain-vit-tiny-demo", "data.url=null"], "jobs/pretrain-vit-tiny-demo.yaml", "data.url"),
    (["show", "pretrain-vit-tiny-demo", "modle.name=x"], "jobs/pretrain-vit-tiny-demo.yaml", "modle"),
])
def test_bad_config_exits_2_naming_file_and_key_and_records_nothing(tmp_path, args, file, key):
    result = maectl(args, clean_env(tmp_path))
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"maectl: error: {file}: {key}:"), message
    assert jobs_recorded(tmp_path) == 0 and not (tmp_path / "home" / "jobs").exists()
    assert not (tmp_path / "out").exists()


GOLDEN_CASES = {
    "dryrun-local-demo": ["submit", "pretrain-vit-tiny-demo", "--backend", "local", "--dry-run"],
    "dryrun-local-2ranks": ["submit", "pretrain-vit-l-800ep", "resources.nodes=1", "resources.gpus_per_node=0", "resources.tasks_per_node=2",
                            "data.batch_size=8", "global_batch=64", "train.epochs=1",
                            f"tracking.uri=http://alice:{URI_PASSWORD}@127.0.0.1:5000", "--backend", "local", "--dry-run"],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_dry_run_matches_golden_and_submits_nothing(tmp_path, name):
    """The plan is pinned; the job spec it writes is checked key by key below."""
    result = maectl(GOLDEN_CASES[name], clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert_no_secrets(result.stdout + result.stderr)
    check_golden(f"{name}.txt", plan_part(result.stdout))
    assert str(tmp_path) not in result.stdout, "machine paths become placeholders"
    assert jobs_recorded(tmp_path) == 0 and not (tmp_path / "home").exists() and not (tmp_path / "out").exists()
    [spec] = rendered_specs(result.stdout)
    assert spec["format"] == "maectl.job/1" and spec["handle"] == "<handle>" and spec["backend"] == "local"
    assert spec["submitted"] == {"user": "<user>", "git_commit": "<git_commit>", "git_dirty": False, "maectl_version": spec["submitted"]["maectl_version"]}
    assert spec["resolved"]["output_dir"] == f"<output_root>/{spec['experiment']}/<handle>"
    assert spec["tracking"]["run_name"] == "<handle>" and spec["tracking"]["experiment"] == spec["experiment"]


def test_dry_run_of_two_ranks_uses_torchrun(tmp_path):
    result = maectl(GOLDEN_CASES["dryrun-local-2ranks"], clean_env(tmp_path))
    text = result.stdout
    assert "torch.distributed.run --standalone --nnodes=1 --nproc-per-node=2 -m orchestrator.runner" in text
    assert "AWS_SECRET_ACCESS_KEY=<redacted>" in text
    [spec] = rendered_specs(text)
    assert spec["tracking"]["uri"] == "http://alice:<redacted>@127.0.0.1:5000"
    resolved = spec["resolved"]
    assert resolved["train"]["accum_iter"] == 4  # 64 = 8 per rank x 2 ranks x 4
    assert resolved["resources"]["tasks_per_node"] == 2 and resolved["data"]["batch_size"] == 8 and resolved["train"]["epochs"] == 1
    assert resolved["global_batch"] == 64 and resolved["experiment"] == "pretrain-vit-l-800ep"


def test_list_shows_experiments_and_jobs(tmp_path):
    result = maectl(["list"], clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "pretrain-vit-h-1600ep" in result.stdout and "ablate-decoder-depth-1" in result.stdout
    assert "no jobs yet" in result.stdout


def test_unknown_job_handle(tmp_path):
    result = maectl(["status", "local-nothere"], clean_env(tmp_path))
    assert result.returncode == 2 and "no job 'local-nothere'" in result.stderr


def test_only_the_tracking_module_imports_mlflow():
    import re

    importers = [str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "orchestrator").rglob("*.py")
                 if re.search(r"^\s*(import mlflow|from mlflow)", p.read_text(), re.MULTILINE)]
    assert importers and all(p == "orchestrator/tracking.py" or p.startswith("orchestrator/tracking/") for p in importers), importers


def test_job_commands_do_not_load_torch(tmp_path):
    """list/status/logs/cancel answer in well under a second: they never import torch or mlflow
    (mae_core.exitcodes, plain data, is all they take from mae_core)."""
    code = ("import sys; from orchestrator.cli import main; main(['list']); main(['status', 'local-none']); "
            "print(sorted(m for m in ('torch', 'mlflow', 'ray', 'mae_core.engine', 'mae_core.data', 'mae_core.models') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=clean_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _store_with_jobs(tmp_path):
    from orchestrator.backends import JobState
    from orchestrator.store import JobRecord, JobStore, SweepRecord

    store = JobStore(tmp_path / "home" / "jobs.db")
    states = {"local-ok0001": (JobState.COMPLETED, 0), "local-bad001": (JobState.FAILED, 4), "local-can001": (JobState.CANCELLED, 143),
              "local-not001": (JobState.CANCELLED, 6)}
    for handle, (state, code) in states.items():
        store.add(JobRecord(handle=handle, experiment="exp", source="jobs/exp.yaml", backend="local", state=state, exit_code=code,
                            output_dir=str(tmp_path / "out" / handle), job_dir=str(tmp_path / "home" / "jobs" / handle),
                            sweep_id="sweep-abc123" if handle in ("local-ok0001", "local-bad001") else None,
                            after="local-ok0001" if handle == "local-not001" else None))
    store.add_sweep(SweepRecord(sweep_id="sweep-abc123", experiment="exp", source="jobs/exp.yaml", backend="local",
                                axes=[["model.mask_ratio", [0.5, 0.9]]],
                                points=[{"handle": "local-ok0001", "values": {"model.mask_ratio": 0.5}},
                                        {"handle": "local-bad001", "values": {"model.mask_ratio": 0.9}}]))
    return store


@pytest.mark.parametrize("handle, code", [("local-ok0001", 0), ("local-bad001", 4), ("local-can001", 143), ("local-not001", 6)])
def test_status_exit_code_and_json_of_a_job(tmp_path, handle, code):
    import json

    _store_with_jobs(tmp_path)
    env = clean_env(tmp_path)
    shown = maectl(["status", handle], env)
    assert shown.returncode == code, shown.stdout + shown.stderr
    result = maectl(["status", handle, "--json"], env)
    assert result.returncode == code, result.stderr
    job = json.loads(result.stdout)
    assert job["handle"] == handle and job["status_exit_code"] == code and job["backend"] == "local"
    assert job["state"] in ("completed", "failed", "cancelled") and isinstance(job["metrics"], dict)
    if handle == "local-ok0001":
        assert [f["handle"] for f in job["followups"]] == ["local-not001"]


def test_status_json_of_a_sweep_and_cancel_by_sweep_id(tmp_path):
    import json

    _store_with_jobs(tmp_path)
    env = clean_env(tmp_path)
    result = maectl(["status", "sweep-abc", "--json"], env)
    assert result.returncode == 4, result.stderr  # a point failed with exit code 4
    sweep = json.loads(result.stdout)
    assert sweep["sweep_id"] == "sweep-abc123" and sweep["states"] == {"completed": 1, "failed": 1}
    assert [(p["index"], p["values"]["model.mask_ratio"], p["job"]["handle"], p["job"]["state"]) for p in sweep["points"]] == [
        (0, 0.5, "local-ok0001", "completed"), (1, 0.9, "local-bad001", "failed")]
    cancelled = maectl(["cancel", "sweep-abc123"], env)
    assert cancelled.returncode == 0 and "sweep sweep-abc123: 0 of 2 job(s) still going" in cancelled.stdout, cancelled.stdout + cancelled.stderr


@pytest.mark.parametrize("url", ["/nonexistent/maectl-shards", "file:///nonexistent/maectl-shards"])
def test_local_data_path_missing_on_this_machine_is_refused_before_anything_is_recorded(tmp_path, url):
    result = maectl(["submit", "pretrain-vit-tiny-demo", f"data.url={url}", "--backend", "local"], clean_env(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("maectl: error: jobs/pretrain-vit-tiny-demo.yaml: data.url: ") and "does not exist" in message, message
    assert "(set on the command line)" in message
    assert jobs_recorded(tmp_path) == 0 and not (tmp_path / "home" / "jobs").exists() and not (tmp_path / "out").exists()
