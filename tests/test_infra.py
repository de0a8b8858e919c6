"""The development stack (infra/stack.sh): its pieces without services, then each real service.

The integration tests talk to what `infra/dev.sh test` brought up: SLURM (with accounting),
the S3 API server, the MLflow tracking server and the Ray head.
"""
from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_stack():
    """infra/stack/ is a standalone package (not installed): load it under a private name."""
    name = "maectl_infra_stack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "infra" / "stack" / "__init__.py",
            submodule_search_locations=[str(ROOT / "infra" / "stack")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def stack_pkg():
    _load_stack()
    import maectl_infra_stack.cli as cli
    import maectl_infra_stack.config as config
    import maectl_infra_stack.process as process
    import maectl_infra_stack.slurm as slurm
    return type("Stack", (), {"cli": cli, "config": config, "process": process, "slurm": slurm})


@pytest.fixture
def settings(stack_pkg, tmp_path, monkeypatch):
    monkeypatch.setenv("MAECTL_STACK_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MAECTL_STACK_RUNTIME", str(tmp_path / "rt"))
    return stack_pkg.config.load(ROOT)


# --- without services -------------------------------------------------------------------

def test_slurm_conf_has_the_settings_that_work_here(stack_pkg, settings):
    conf = stack_pkg.slurm.render_slurm_conf(settings, real_memory=1000)
    for line in ("SelectTypeParameters=CR_CPU", "JobRequeue=1", "ReturnToService=2",
                 "SchedulerParameters=sched_interval=2", "KillWait=5", "MailProg=/bin/true",
                 "ProctrackType=proctrack/linuxproc", "AccountingStorageType=accounting_storage/slurmdbd",
                 f"SlurmctldHost={settings.hostname}(127.0.0.1)"):
        assert line in conf.splitlines()
    assert f"PartitionName=debug Nodes={settings.hostname} Default=YES" in conf
    assert "CPUs=2 RealMemory=1000" in conf
    assert str(settings.state) in conf  # all state under the stack's folder


def test_ports_are_overridable_and_clients_get_matching_env(stack_pkg, monkeypatch, tmp_path):
    monkeypatch.setenv("MAECTL_STACK_STATE", str(tmp_path))
    monkeypatch.setenv("MAECTL_MLFLOW_PORT", "25555")
    s = stack_pkg.config.load(ROOT)
    env = stack_pkg.config.client_env(s, {"s3", "mlflow", "ray", "slurm"})
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:25555"
    assert env["AWS_ENDPOINT_URL"] == env["MAECTL_S3_ENDPOINT"]
    assert env["RAY_ADDRESS"].startswith("http://127.0.0.1:") and env["RAY_AUTH_MODE"] == "disabled"
    assert env["MAECTL_SLURM_PARTITION"] == "debug" and env["SLURM_CONF"].startswith(str(tmp_path))
    assert "RAY_ADDRESS" not in stack_pkg.config.client_env(s, {"s3"})


def test_unknown_service_is_refused(stack_pkg):
    with pytest.raises(SystemExit, match="unknown service"):
        stack_pkg.cli.parse_groups(["s3", "postgres"])
    assert stack_pkg.cli.parse_groups(["ray", "s3"]) == ["s3", "ray"]


def test_daemon_stops_its_own_process_tree_and_nothing_else(stack_pkg, tmp_path):
    Daemon = stack_pkg.process.Daemon
    d = Daemon("sleeper", tmp_path / "run", tmp_path / "log")
    pid = d.spawn(["/bin/sh", "-c", "sleep 60 & sleep 60; wait"], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    time.sleep(0.3)
    family = [(pid, stack_pkg.process.start_time(pid)), *stack_pkg.process.descendants(pid)]
    assert d.running() is not None and len(family) == 3
    assert d.stop(timeout=5).startswith("stopped")
    assert not any(stack_pkg.process.is_alive(p, s) for p, s in family)
    assert not d.pidfile.exists()

    # A PID file whose PID now belongs to another process (PID reuse) must not be signalled.
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        d.pidfile.write_text(f'{{"pid": {bystander.pid}, "started": 1, "config": {{}}}}')
        assert d.running() is None
        assert d.stop(timeout=1) == "not running"
        assert bystander.poll() is None
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()


def test_a_service_that_dies_fails_fast_with_its_log(stack_pkg, tmp_path):
    d = stack_pkg.process.Daemon("crasher", tmp_path / "run", tmp_path / "log")
    d.spawn(["/bin/sh", "-c", "echo boom: bad config >&2; exit 3"], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    t0 = time.monotonic()
    with pytest.raises(stack_pkg.process.StackError, match="(?s)crasher exited before.*boom: bad config"):
        stack_pkg.process.wait_healthy(d, lambda: False, timeout=30)
    assert time.monotonic() - t0 < 5


def test_leases_ignore_dead_sessions(stack_pkg, settings):
    leases = stack_pkg.cli.Leases(settings)
    gone = subprocess.Popen(["true"])
    gone.wait()
    leases.add(gone.pid)  # its start time is unknown: not a live holder
    import os
    leases.add(os.getpid())
    assert leases.live() == [os.getpid()]
    leases.remove(os.getpid())
    assert leases.live() == []


# --- against the real services ----------------------------------------------------------

@pytest.mark.integration
def test_slurm_submitit_two_tasks_reach_completed(slurm_cluster, tmp_path):
    submitit = pytest.importorskip("submitit")

    def report_rank():  # nested: pickled by value, so the job needs no import of this file
        import submitit as sub
        env = sub.JobEnvironment()
        return env.global_rank, env.num_tasks

    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition=slurm_cluster.partition, nodes=1, tasks_per_node=2,
                               cpus_per_task=1, timeout_min=5, name="maectl-infra-test")
    job = executor.submit(report_rank)
    assert sorted(job.results()) == [(0, 2), (1, 2)]
    deadline = time.monotonic() + 30  # accounting lags the job's end by a moment
    while job.get_info(mode="force").get("State") != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(1)
    assert job.state == "COMPLETED"


@pytest.mark.integration
def test_s3_put_get_through_s3fs(stack_s3_endpoint, stack_s3_bucket):
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": stack_s3_endpoint})
    key = f"{stack_s3_bucket}/infra-test/{uuid.uuid4().hex}/blob.bin"
    payload = bytes(range(256)) * 4096  # 1 MiB
    with fs.open(key, "wb") as fh:
        fh.write(payload)
    try:
        assert fs.cat(key) == payload
        assert fs.info(key)["size"] == len(payload)
    finally:
        fs.rm(key)
    assert not fs.exists(key)


@pytest.mark.integration
def test_mlflow_run_metric_and_artifact_round_trip(mlflow_tracking_uri, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri)
    experiment_id = client.create_experiment(f"infra-test-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_metric(run_id, "loss", 0.75, step=1)
    client.log_metric(run_id, "loss", 0.5, step=2)
    client.log_text(run_id, "hello from maectl", "notes/hello.txt")
    client.set_terminated(run_id)
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.75), (2, 0.5)]
    local = client.download_artifacts(run_id, "notes/hello.txt", str(tmp_path))
    assert Path(local).read_text() == "hello from maectl"
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.integration
def test_ray_job_runs_to_succeeded_with_the_venv_python(ray_address):
    pytest.importorskip("ray")
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_address)
    code = ("import sys, ray; ray.init(); "
            "f = ray.remote(lambda x: x * 2); "
            "print('answer', ray.get(f.remote(21)), 'prefix', sys.prefix)")
    job_id = client.submit_job(entrypoint=f'python -c "{code}"',
                               runtime_env={"env_vars": {"MAECTL_INFRA_TEST": "1"}})
    deadline = time.monotonic() + 90
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert "answer 42" in logs
    assert f"prefix {sys.prefix}" in logs  # entrypoints resolve `python` from the head's PATH


# --- templates for real clusters ---------------------------------------------------------

TEMPLATES = ROOT / "infra" / "templates"


@pytest.mark.parametrize("path", sorted(p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*") if p.is_file()))
def test_templates_say_they_are_templates_and_hold_no_secrets(path):
    text = (TEMPLATES / path).read_text()
    assert "TEMPLATE" in text[:600], f"{path}: first lines must mark it as a template"
    assert "AKIA" not in text and "BEGIN PRIVATE KEY" not in text
    if path.endswith((".yaml", ".yml")):
        import yaml

        assert isinstance(yaml.safe_load(text), dict)


def test_slurm_site_template_uses_maectls_resource_keys():
    import yaml

    from orchestrator.resources import Resources

    site = yaml.safe_load((TEMPLATES / "slurm" / "site.yaml").read_text())
    resources = Resources(**site["resources"])
    assert resources.gpus_per_node == 8 and resources.ranks_per_node == 8
    assert site["backend"] == "slurm" and site["slurm"]["setup"]
