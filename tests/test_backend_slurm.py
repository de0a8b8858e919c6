"""The SLURM backend: dry-run golden files, state mapping and pre-submit checks without a cluster;
then real jobs on the stack's single-node SLURM (`infra/stack.sh up slurm mlflow`): a 2-task job
to COMPLETED; one job that survives an external `scontrol requeue` and a USR2 preemption
(submitit's checkpoint() + requeue) and still ends with the right step count and ONE MLflow run;
a cancel; a bad partition that stops the submission.

Regenerate the golden files after an intended change with MAECTL_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mae_core.exitcodes import ExitCode
from orchestrator import checks
from orchestrator.backends.slurm import SlurmBackend, SlurmTask, cluster, map_state, parse_sinfo
from orchestrator.backends.slurm import backend as slurm_backend
from orchestrator.backends.slurm import task as slurm_task
from orchestrator.backends.states import JobState
from orchestrator.cli import main
from orchestrator.locations import PROJECT_ROOT
from orchestrator.plan import PASSED_ENV_PREFIXES
from tests.fixtures import jobs
from tests.fixtures.plans import check_golden, plan_part, rendered_specs

DEMO = "pretrain-vit-tiny-demo"
# Two CPU tasks that fill the development node (2 CPUs); no kNN/reconstruction passes, which
# only cost time; a metric line per step, so that the tests can tell where a requeue struck.
TWO_TASKS = ["resources.tasks_per_node=2", "resources.cpus_per_task=1", "resources.mem_gb=2", "resources.time_limit_min=30",
             "monitor.knn_every_epochs=null", "monitor.recon_every_epochs=null", "train.log_every=1", "train.device=cpu"]
# demo_shards: 400 images; 8 per rank x 2 ranks = 25 steps an epoch, so every run below stays in epoch 0.
TINY = ["data.batch_size=8", "data.num_workers=1", "checkpoint.every_steps=2", "checkpoint.keep_last=20"]
END_STATES = jobs.end_states()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.delenv("MAECTL_JOBS_PATH", raising=False)
    monkeypatch.chdir(PROJECT_ROOT)  # experiment sources are shown relative to the working directory


def _only_env(monkeypatch, **values):
    """Exactly these of the variables that dry-runs show; none inherited."""
    jobs.only_env(monkeypatch, PASSED_ENV_PREFIXES, **values)


_check_golden = check_golden


def _dry_run(capsys, overrides: list[str]) -> tuple[str, dict]:
    """(the plan as rendered, the job spec it writes). The spec, which changes with every config
    default, is checked by key rather than pinned."""
    assert main(["submit", DEMO, *overrides, "--backend", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    [spec] = rendered_specs(out)
    return plan_part(out), spec


# -- without a cluster ---------------------------------------------------------------------------
def test_dry_run_cpu_golden(capsys, monkeypatch):
    _only_env(monkeypatch, AWS_SECRET_ACCESS_KEY="golden-secret-value", MLFLOW_TRACKING_URI="http://alice:hunter22@127.0.0.1:5000")
    head, spec = _dry_run(capsys, [*TWO_TASKS, "slurm.max_requeues=2"])
    _check_golden("slurm_dry_run_cpu.txt", head)
    assert "golden-secret-value" not in head and "hunter22" not in head
    assert "#SBATCH --ntasks-per-node=2" in head and "#SBATCH --requeue" in head and "#SBATCH --signal=USR2@120" in head
    assert spec["handle"] == "<handle>" and spec["backend"] == "slurm" and spec["resolved"]["slurm"]["max_requeues"] == 2


def test_dry_run_gpu_multinode_golden(capsys, monkeypatch):
    """Every resource key reaches sbatch: 2 nodes x 4 GPUs = 8 tasks, site options, setup lines."""
    _only_env(monkeypatch)
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", "/shared/maectl/runs")
    head, spec = _dry_run(capsys, [
        "resources.nodes=2", "resources.gpus_per_node=4", "resources.tasks_per_node=null", "resources.cpus_per_task=8",
        "resources.mem_gb=256", "resources.time_limit_min=2880", "resources.partition=gpu", "resources.account=vision",
        "resources.qos=high", "resources.constraint=h100", "resources.sbatch_options.exclusive=true",
        "resources.sbatch_options.gres-flags=enforce-binding", "slurm.job_folder=/shared/maectl/jobs", "slurm.signal_delay_s=300",
        "slurm.setup=[module load cuda/12.8, source /shared/envs/maectl/bin/activate]", "slurm.srun_args=[--cpu-bind=none]",
    ])
    _check_golden("slurm_dry_run_gpu.txt", head)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --partition=gpu",
                 "#SBATCH --account=vision", "#SBATCH --qos=high", "#SBATCH --constraint=h100", "#SBATCH --exclusive",
                 "#SBATCH --gres-flags=enforce-binding", "#SBATCH --mem=256GB", "#SBATCH --time=2880", "module load cuda/12.8"):
        assert line in head.splitlines(), line
    (srun,) = [line for line in head.splitlines() if line.startswith("srun ")]
    # srun of Slurm 22.05-23.02 does not take --cpus-per-task from the allocation: given explicitly.
    assert "/shared/maectl/jobs/<handle>/%j_%t_log.out" in srun and srun.split()[4:6] == ["--cpus-per-task=8", "--cpu-bind=none"]
    assert spec["resolved"]["output_dir"] == "<output_root>/pretrain-vit-tiny-demo/<handle>"
    # The code snapshot: first on the import path, after the site's own setup lines.
    lines = head.splitlines()
    setup = lines[lines.index("# setup") + 1:lines.index("# command") - 1]
    assert setup == ["module load cuda/12.8", "source /shared/envs/maectl/bin/activate",
                     "export PYTHONPATH='/shared/maectl/jobs/<handle>/code'${PYTHONPATH:+:$PYTHONPATH}", "export PYTHONSAFEPATH=1"]


CONTAINER = ["resources.nodes=2", "resources.gpus_per_node=4", "resources.tasks_per_node=null", "resources.cpus_per_task=8",
             "resources.mem_gb=256", "resources.time_limit_min=2880", "resources.partition=gpu", "slurm.job_folder=/shared/maectl/jobs",
             "output_dir=/shared/maectl/runs/<handle>", "slurm.container.mounts=[/shared/datasets:/data:ro, /shared/maectl]"]


def test_dry_run_pyxis_container_golden(capsys, monkeypatch):
    """pyxis: srun starts each task in the image; the interpreter is the image's `python`."""
    _only_env(monkeypatch)
    head, _ = _dry_run(capsys, [*CONTAINER, "slurm.container.image=nvcr.io#nvidia/pytorch:25.01-py3", "slurm.container.runtime=pyxis"])
    _check_golden("slurm_dry_run_pyxis.txt", head)
    (srun,) = [line for line in head.splitlines() if line.startswith("srun ")]
    words = shlex.split(srun)
    assert "--container-image=nvcr.io#nvidia/pytorch:25.01-py3" in words
    # /shared/maectl covers the job folder and the output folder: nothing added.
    assert "--container-mounts=/shared/datasets:/data:ro,/shared/maectl" in words
    assert words[words.index("-u") - 1] == "python" and "<python>" not in srun


def test_dry_run_apptainer_container_golden(capsys, monkeypatch):
    """apptainer: `apptainer exec --nv --bind ... IMAGE python` is submitit's interpreter; the
    job folder (the code snapshot, submitit's pickles) is bound when no mount covers it."""
    _only_env(monkeypatch)
    head, _ = _dry_run(capsys, [*CONTAINER, "slurm.container.image=/shared/images/maectl.sif", "slurm.container.runtime=apptainer",
                                "slurm.container.mounts=[/shared/datasets]", "slurm.python=python3.11"])
    _check_golden("slurm_dry_run_apptainer.txt", head)
    (srun,) = [line for line in head.splitlines() if line.startswith("srun ")]
    assert ("apptainer exec --nv --bind /shared/datasets,/shared/maectl/jobs/<handle>,/shared/maectl/runs/<handle> "
            "/shared/images/maectl.sif python3.11 -u -m submitit.core._submit") in shlex.join(shlex.split(srun)).replace("'", "")
    assert "--container-image" not in srun


def test_dry_run_python_is_configurable(capsys, monkeypatch):
    _only_env(monkeypatch)
    head, _ = _dry_run(capsys, [*TWO_TASKS, "slurm.python=/shared/envs/maectl/bin/python"])
    (srun,) = [line for line in head.splitlines() if line.startswith("srun ")]
    assert " /shared/envs/maectl/bin/python -u -m submitit.core._submit " in srun and "<python>" not in srun
    assert "# interpreter: /shared/envs/maectl/bin/python (slurm.python)" in head


@pytest.mark.parametrize("overrides, key", [
    (["resources.sbatch_options.partition=gpu"], "resources.sbatch_options.partition"),
    (["resources.sbatch_options.cpus_per_task=4"], "resources.sbatch_options.cpus_per_task"),
    (["resources.time_limit_min=null"], "resources.time_limit_min"),
    (["resources.time_limit_min=2"], "slurm.signal_delay_s"),  # the 120 s warning would come at once
    (["resources.nodes=2"], "output_dir"),  # the output root is under /tmp: node-local
    (["resources.nodes=2", "slurm.job_folder=/tmp/maectl-jobs", "output_dir=/shared/x"], "slurm.job_folder"),
    (["slurm.max_restarts=-1"], "slurm.max_restarts"),
    (["slurm.array_parallelism=0"], "slurm.array_parallelism"),
    (["slurm.container.runtime=docker", "slurm.container.image=x"], "slurm.container.runtime"),
    (["slurm.container.mounts=/data"], "slurm.container.mounts"),
])
def test_static_checks_name_the_key(capsys, monkeypatch, overrides, key):
    _only_env(monkeypatch)
    assert main(["submit", DEMO, *TWO_TASKS, *overrides, "--backend", "slurm", "--dry-run"]) == 2
    assert f": {key}:" in capsys.readouterr().err


def test_site_template_slurm_block_is_what_the_backend_reads():
    from mae_core.structured import from_dict
    from orchestrator.experiments import SlurmConfig

    site = yaml.safe_load((PROJECT_ROOT / "infra" / "templates" / "slurm" / "site.yaml").read_text())
    config = from_dict(SlurmConfig, site["slurm"])
    assert config.job_folder and config.setup and config.max_requeues == 3


FAKE_SINFO = """\
cpu*|c1|64|256000|(null)|(null)|2-00:00:00
cpu*|c2|64|256000|(null)|(null)|2-00:00:00
gpu|g1|96|512000|gpu:h100:2(S:0),gpu:h100:2(S:1)|h100,ib|1-00:00:00
gpu|g2|96|512000|gpu:h100:2|h100|1-00:00:00
"""


def test_parse_sinfo():
    parts = parse_sinfo(FAKE_SINFO)
    assert set(parts) == {"cpu", "gpu"} and parts["cpu"].default and not parts["gpu"].default
    assert [n.gpus for n in parts["gpu"].nodes] == [4, 2] and parts["gpu"].time_limit_min == 1440
    assert parts["gpu"].nodes[0].features == {"h100", "ib"} and parts["cpu"].nodes[0].memory_mb == 256000
    assert cluster._minutes("infinite") is None and cluster._minutes("30:00") == 30 and cluster._minutes("1-02:03:04") == 1564


@pytest.mark.parametrize("overrides, key", [
    (["resources.partition=nope"], "resources.partition"),
    (["resources.partition=gpu", "resources.tasks_per_node=null", "resources.gpus_per_node=6"], "resources.gpus_per_node"),
    (["resources.cpus_per_task=40"], "resources.cpus_per_task"),  # 2 tasks x 40 > 64 CPUs
    (["resources.mem_gb=300"], "resources.mem_gb"),
    (["resources.partition=gpu", "resources.tasks_per_node=null", "resources.gpus_per_node=4", "resources.nodes=2"],
     "resources.nodes"),  # only one node has 4 GPUs
    (["resources.partition=gpu", "resources.constraint=a100"], "resources.constraint"),
    (["resources.partition=gpu", "resources.time_limit_min=2000"], "resources.time_limit_min"),
    (["data.url=/nonexistent/maectl-data"], "data.url"),
])
def test_cluster_checks_against_sinfo(capsys, monkeypatch, demo_shards, overrides, key):
    """What sinfo reports decides; the submission stops with exit 2 naming the key."""
    _only_env(monkeypatch)
    monkeypatch.setattr(cluster, "query_partitions", lambda: parse_sinfo(FAKE_SINFO))
    monkeypatch.setattr(slurm_backend.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(checks, "NODE_LOCAL_PREFIXES", ())  # tmp_path stands for shared storage here
    assert main(["submit", DEMO, *TWO_TASKS, f"data.url={demo_shards}", *overrides, "--backend", "slurm"]) == 2
    assert f": {key}:" in capsys.readouterr().err
    assert not (Path(os.environ["MAECTL_HOME"]) / "jobs.db").exists() or _records() == []


@pytest.mark.parametrize("native, restarts, reason, exit_code, expected", [
    ("PENDING", 0, "Resources", None, JobState.PENDING),
    ("PENDING", 1, "BeginTime", None, JobState.REQUEUED),
    ("REQUEUED", 1, None, None, JobState.REQUEUED),
    ("REQUEUE_HOLD", 2, "JobHeldAdmin", None, JobState.REQUEUED),
    ("RUNNING", 2, None, None, JobState.RUNNING),
    ("COMPLETING", 0, None, None, JobState.RUNNING),
    ("COMPLETED", 0, None, 0, JobState.COMPLETED),
    ("FAILED", 0, None, 2, JobState.FAILED),
    ("CANCELLED by 0", 0, None, 0, JobState.CANCELLED),
    ("TIMEOUT", 0, None, 0, JobState.FAILED),
    ("PREEMPTED", 0, None, 0, JobState.FAILED),
    ("NODE_FAIL", 0, None, 1, JobState.FAILED),
    ("OUT_OF_MEMORY", 0, None, 0, JobState.FAILED),
    ("BOOT_FAIL", 0, None, 0, JobState.FAILED),
    ("SOMETHING_NEW", 0, None, 0, JobState.UNKNOWN),
])
def test_slurm_states_map_to_maectl_states(native, restarts, reason, exit_code, expected):
    status = map_state(native, restarts=restarts, reason=reason, exit_code=exit_code)
    assert status.state == expected
    if native == "FAILED":
        assert status.message == "bad config or input" and status.exit_code == 2
    if native == "OUT_OF_MEMORY":
        assert "mem_gb" in status.message
    if expected == JobState.REQUEUED and native == "PENDING":
        assert "BeginTime" in status.message


def test_distributed_env_from_the_job_environment():
    job = SimpleNamespace(global_rank=5, local_rank=1, num_tasks=8, num_nodes=2, node=1, hostnames=["gpu-a17", "gpu-a18"], raw_job_id="123456")
    env = slurm_task.distributed_env(job)
    assert env == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "NODE_RANK": "1",
                   "MASTER_ADDR": "gpu-a17", "MASTER_PORT": str(30000 + 123456 % 2500)}


def _fake_slurm_task_env(monkeypatch, restarts: int) -> None:
    """What SLURM and submitit set for task 0 of a one-task job."""
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n1",
                        "SLURM_RESTART_COUNT": str(restarts)}.items():
        monkeypatch.setenv(name, value)


def test_checkpoint_requeues_the_same_task_until_the_bound(monkeypatch):
    task = SlurmTask("/shared/job.yaml", {"MAECTL_JOB": "slurm-abc"}, max_requeues=2)
    _fake_slurm_task_env(monkeypatch, restarts=1)
    delayed = task.checkpoint()
    again = delayed.function
    assert isinstance(again, SlurmTask) and (again.spec_path, again.env, again.max_requeues) == (task.spec_path, task.env, 2)
    _fake_slurm_task_env(monkeypatch, restarts=2)
    assert task.checkpoint() is None  # submitit then ends the job instead of requeueing it


def test_task_refuses_to_run_past_the_requeue_bound(monkeypatch, capsys):
    _fake_slurm_task_env(monkeypatch, restarts=4)
    with pytest.raises(SystemExit) as exited:
        SlurmTask("/nonexistent/job.yaml", {}, max_requeues=3)()
    assert exited.value.code == ExitCode.TOO_MANY_RESTARTS
    assert "slurm.max_requeues is 3" in capsys.readouterr().out


def test_rank_0_stops_for_good_when_submitit_may_not_requeue(monkeypatch, capsys):
    """At the bound, checkpoint() returns None and submitit's handler raises instead of
    requeueing: the task ends with its own exit code (a clear state), not a traceback."""
    from submitit.core.utils import UncompletedJobError

    installed = {}
    monkeypatch.setattr(slurm_task.signal, "signal", lambda signum, handler: installed.__setitem__(signum, handler))

    def submitit_handler(signum, frame):
        raise UncompletedJobError("Job not requeued because: checkpoint function returned None.")

    with pytest.raises(SystemExit) as exited:
        SlurmTask._requeue(0, slurm_task.signal.SIGUSR2, submitit_handler)
    assert exited.value.code == ExitCode.TOO_MANY_RESTARTS
    assert "checkpoint function returned None" in capsys.readouterr().out
    assert installed[slurm_task.signal.SIGTERM] == slurm_task.signal.SIG_IGN  # the requeue's SIGTERM may not cut it short
    assert map_state("FAILED", exit_code=ExitCode.TOO_MANY_RESTARTS).message == ExitCode.TOO_MANY_RESTARTS.meaning


def test_failure_retry_is_claimed_once_per_run_and_bounded(tmp_path, monkeypatch, capsys):
    """Of a run's failed ranks, one decides (the marker is created O_EXCL); past
    slurm.max_restarts nothing is requeued; failure retries do not count as requeues."""
    spec = tmp_path / "job.yaml"
    task = SlurmTask(str(spec), {}, max_requeues=1, max_restarts=0)
    assert task._retry_after_failure("77", 1, restarts=0) is False  # max_restarts 0: never requeued
    assert "not retrying: 0 retries done, slurm.max_restarts is 0" in capsys.readouterr().out
    assert task._retry_after_failure("77", 0, restarts=0) is False  # rank 1 claimed run 1 already
    assert capsys.readouterr().out == ""
    assert [p.name for p in slurm_task.failure_markers(str(spec), "77")] == ["77.run1.failed"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert task._requeues("77") == 1  # 2 restarts, 1 of them after a failure


def test_logs_rank_and_all_read_one_log_per_task(tmp_path, capsys):
    folder = tmp_path / "slurm"
    folder.mkdir()
    for rank in (0, 1):
        (folder / f"12_{rank}_log.out").write_text(f"rank {rank} line 1\nrank {rank} line 2\n")
    record = SimpleNamespace(native_id="12", log_path=str(folder / "12_0_log.out"), info={"tasks": 2, "folder": str(folder)})
    backend = SlurmBackend()
    assert "".join(backend.logs(record, rank=1)) == "rank 1 line 1\nrank 1 line 2\n"
    assert list(backend.all_logs(record)) == ["[rank 0] rank 0 line 1\n", "[rank 0] rank 0 line 2\n",
                                              "[rank 1] rank 1 line 1\n", "[rank 1] rank 1 line 2\n"]
    array = SimpleNamespace(native_id="40_3", log_path=str(folder / "40_3_0_log.out"), info={"tasks": 2})
    assert backend.log_path(array, 1) == folder / "40_3_1_log.out"


# -- against the stack's SLURM -------------------------------------------------------------------
_records = jobs.records
_metric_steps = jobs.metric_steps
_checkpoint_steps = jobs.checkpoint_steps
_mlflow_runs = jobs.mlflow_runs


def _submit(overrides: list[str]):
    return jobs.submit(DEMO, overrides, "slurm")


def _wait(record, states, timeout: float):
    return jobs.wait(SlurmBackend(), record, states, timeout)


def _log(record) -> str:
    return jobs.log(SlurmBackend(), record)


_redone_steps = jobs.redone_steps


def _wait_checkpoint_after(record, step: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while not [s for s in _checkpoint_steps(record.output_dir) if s > step]:
        assert time.monotonic() < deadline, f"no checkpoint after step {step}:\n{_log(record)[-3000:]}"
        time.sleep(0.2)
    return _checkpoint_steps(record.output_dir)[-1]


def _restarts(job_id: str) -> int:
    return int((cluster._scontrol_job(job_id) or {}).get("Restarts") or 0)


def _release_requeued(record, restarts: int, timeout: float = 60) -> None:
    """A requeued job waits ~120 s (BeginTime); release it, but only >= 2 s after the requeue
    (sooner and the restart dies with "Job credential revoked")."""
    deadline = time.monotonic() + timeout
    while not (_restarts(record.native_id) >= restarts and SlurmBackend().status(record).state == JobState.REQUEUED):
        assert time.monotonic() < deadline, f"job not requeued ({_restarts(record.native_id)} restarts):\n{_log(record)[-3000:]}"
        time.sleep(0.3)
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={record.native_id}", "StartTime=now"], check=True, capture_output=True)


@pytest.fixture
def slurm_job_env(slurm_cluster, mlflow_tracking_uri, demo_shards, monkeypatch):
    """The stack's SLURM and MLflow; a fresh MLflow experiment, so that runs can be counted."""
    _only_env(monkeypatch)
    experiment = f"test-slurm-{uuid.uuid4().hex[:8]}"
    return {"uri": mlflow_tracking_uri, "experiment": experiment,
            "overrides": [*TWO_TASKS, *TINY, f"data.url={demo_shards}", f"resources.partition={slurm_cluster.partition}",
                          f"tracking.uri={mlflow_tracking_uri}", f"tracking.experiment={experiment}"]}


@pytest.mark.integration
def test_bad_partition_exit_2_nothing_submitted(slurm_job_env, capsys):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert main(["submit", DEMO, *slurm_job_env["overrides"], "resources.partition=no-such-partition", "--backend", "slurm"]) == 2
    err = capsys.readouterr().err
    assert ": resources.partition:" in err and "no-such-partition" in err and "debug" in err
    assert _records() == []
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split() == before


@pytest.mark.integration
def test_two_task_job_runs_to_completed(slurm_job_env):
    started, submitted_at = time.monotonic(), time.time()
    record = _submit([*slurm_job_env["overrides"], "train.max_steps=4"])
    assert record.state == JobState.PENDING and record.native_id.isdigit()
    assert record.log_path.endswith(f"/slurm/{record.native_id}_0_log.out")
    # Follow mode: waits in the queue, streams rank 0's log, returns when the job has ended.
    log = "".join(SlurmBackend().logs(record, follow=True))
    status = _wait(record, END_STATES, timeout=30)
    assert status.state == JobState.COMPLETED, log[-3000:]
    assert log.rstrip().endswith("Exiting after successful completion"), log[-1000:]
    assert "2 task(s) on 1 node(s)" in log and "2 rank(s)" in log and "done: 0 epochs, 4 steps" in log
    assert _checkpoint_steps(record.output_dir) == [2, 4] and max(_metric_steps(record.output_dir)) == 4
    # maectl's store follows SLURM (through accounting once the controller forgets the job).
    assert main(["status", record.handle]) == 0
    stored = _records()[0]
    assert stored.state == JobState.COMPLETED and stored.exit_code == 0
    assert submitted_at - 1 <= stored.finished_at <= time.time() + 1  # SLURM's EndTime (whole seconds)
    client, runs = _mlflow_runs(slurm_job_env["uri"], slurm_job_env["experiment"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    print(f"\n[slurm] 2-task job: {time.monotonic() - started:.1f}s from submit to COMPLETED")


@pytest.mark.integration
def test_a_task_killed_outright_does_not_leave_the_mlflow_run_running(slurm_job_env):
    """SIGKILL of rank 0's task (what the OOM killer does; no retry allowed): the task cannot
    close its MLflow run, so the batch script's teardown ends it FAILED after srun returns; the
    job is FAILED with srun's status, not the teardown's."""
    record = _submit([*slurm_job_env["overrides"], "train.max_steps=200", "slurm.max_restarts=0"])
    _wait_checkpoint_after(record, 0)
    client, runs = _mlflow_runs(slurm_job_env["uri"], slurm_job_env["experiment"])
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    deadline = time.monotonic() + 30
    while (pid := jobs.slurm_task_pid(record.native_id, 0)) is None:
        assert time.monotonic() < deadline, _log(record)[-3000:]
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    status = _wait(record, END_STATES, timeout=120)
    log = _log(record)
    assert status.state == JobState.FAILED and status.exit_code != 0, log[-3000:]
    assert re.search(r"\[maectl\] srun exited \d+: the job's MLflow run, if still RUNNING, is now FAILED", log), log[-3000:]
    assert client.get_run(runs[0].info.run_id).info.status == "FAILED"


@pytest.mark.integration
def test_requeue_and_preemption_resume_one_mlflow_run(slurm_job_env):
    """`scontrol requeue` (no checkpoint() call: resume from the checkpoint on disk), then USR2
    (submitit's preemption path: the engine checkpoints, checkpoint() is called, the job requeues)."""
    final = 10
    started = time.monotonic()
    record = _submit([*slurm_job_env["overrides"], f"train.max_steps={final}", "slurm.max_requeues=2"])
    events = []

    # 1. An external requeue, between two checkpoints: the steps since the last one are lost.
    checkpoint = _wait_checkpoint_after(record, 0)
    deadline = time.monotonic() + 60
    while max(_metric_steps(record.output_dir)) <= checkpoint:
        assert time.monotonic() < deadline, _log(record)[-3000:]
        time.sleep(0.1)
    events.append({"how": "scontrol requeue", "step_at": max(_metric_steps(record.output_dir)), "checkpoint": checkpoint})
    subprocess.run(["scontrol", "requeue", record.native_id], check=True, capture_output=True)
    _release_requeued(record, restarts=1)
    _wait(record, {JobState.RUNNING}, timeout=60)

    # 2. Preemption warning (SLURM's --signal), after the resumed run has made a new checkpoint.
    resumed = _wait_resumes(record, 1)[-1]
    checkpoint = _wait_checkpoint_after(record, resumed[1])
    events.append({"how": "USR2", "step_at": max(_metric_steps(record.output_dir)), "checkpoint": checkpoint})
    subprocess.run(["scancel", "--signal=USR2", record.native_id], check=True, capture_output=True)
    _release_requeued(record, restarts=2)

    status = _wait(record, END_STATES, timeout=180)
    log = _log(record)
    assert status.state == JobState.COMPLETED, log[-4000:]
    resumes = _wait_resumes(record, 2)
    assert len(resumes) == 2, log[-4000:]
    assert "Calling checkpoint method" in log and "[maectl] requeueing (restart 2 of at most 2)" in log
    assert log.count("run 1:") == log.count("run 2:") == log.count("run 3:") == 1
    steps = _metric_steps(record.output_dir)
    redone = _redone_steps(record.output_dir)
    assert len(redone) == 2, steps
    for event, (checkpoint, step), lost in zip(events, resumes, redone):
        # The newest checkpoint there was (the SIGTERM or the warning may have added one).
        assert checkpoint == step >= event["checkpoint"], (events, resumes)
        assert step >= event["step_at"] - 2, (events, resumes)
        event["steps_lost"] = lost
        assert lost <= 2, f"{event['how']}: lost {lost} steps, more than one checkpoint interval (2)"
    # The warning signal makes the engine checkpoint at the next step: nothing is done twice.
    assert events[1]["steps_lost"] == 0, (events, steps)
    assert f"done: 0 epochs, {final} steps" in log
    assert max(steps) == final and set(steps) == set(range(1, final + 1))

    client, runs = _mlflow_runs(slurm_job_env["uri"], slurm_job_env["experiment"])
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one job"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags.get("resumes") == "2"
    assert run.info.run_id == (Path(record.output_dir) / "mlflow_run_id").read_text().strip()
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert {m.step for m in history} == set(range(1, final + 1))
    elapsed = time.monotonic() - started
    print(f"\n[slurm] requeues survived: {len(resumes)} ({', '.join(e['how'] for e in events)}); resumed from steps "
          f"{[s for _, s in resumes]}; steps lost {[e['steps_lost'] for e in events]} (checkpoint interval 2 steps, "
          f"epoch {25} steps); MLflow runs: {len(runs)} (resumes={run.data.tags.get('resumes')}); {elapsed:.1f}s submit to COMPLETED")


def _wait_resumes(record, count: int, timeout: float = 90) -> list[tuple[int, int]]:
    """(checkpoint step, resumed step) of each "resumed from" line of rank 0's log."""
    deadline = time.monotonic() + timeout
    while True:
        found = [(int(c), int(s)) for c, s in re.findall(r"resumed from \S+checkpoint-(\d+)\.pt at epoch \d+, batch \d+, step (\d+)", _log(record))]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"fewer than {count} resumes:\n{_log(record)[-3000:]}"
        time.sleep(0.3)


@pytest.mark.integration
def test_cancel_shows_cancelled_and_ends_the_mlflow_run(slurm_job_env):
    record = _submit([*slurm_job_env["overrides"], "train.max_steps=500"])
    deadline = time.monotonic() + 90
    while not (Path(record.output_dir) / "mlflow_run_id").exists():  # started, with its MLflow run open
        assert time.monotonic() < deadline, _log(record)[-3000:]
        time.sleep(0.3)
    started = time.monotonic()
    assert main(["cancel", record.handle]) == 0
    took = time.monotonic() - started
    assert SlurmBackend().status(record).state == JobState.CANCELLED
    assert _records()[0].state == JobState.CANCELLED
    _, runs = _mlflow_runs(slurm_job_env["uri"], slurm_job_env["experiment"])
    assert len(runs) == 1 and runs[0].info.status == "KILLED"
    print(f"\n[slurm] cancel: RUNNING -> cancelled in {took:.1f}s, MLflow run KILLED")


@pytest.mark.integration
def test_sweep_is_one_job_array_two_points_completed_one_parent_run(slurm_job_env, demo_shards, tmp_path, capsys):
    """`maectl sweep --backend slurm`: the points go to ONE `sbatch --array`; each array task
    (`<array id>_<i>`) runs its point to COMPLETED, with its own MLflow run under one parent."""
    from orchestrator.store import open_store
    from tests.test_orchestrator_sweeps import tiny_sweep

    job = tiny_sweep(tmp_path, demo_shards, steps=2, tracking=True)
    overrides = ["resources.time_limit_min=30", "resources.mem_gb=2", "monitor.knn_every_epochs=null", "monitor.recon_every_epochs=null",
                 "train.device=cpu", "model.decoder_depth=1", *(o for o in slurm_job_env["overrides"] if o.startswith("resources.partition=")),
                 f"tracking.uri={slurm_job_env['uri']}", f"tracking.experiment={slurm_job_env['experiment']}"]
    started = time.monotonic()
    assert main(["sweep", job, "model.mask_ratio=0.5,0.9", *overrides, "--backend", "slurm", "--wait"]) == 0, capsys.readouterr()
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    sweep_id = re.search(r"submitted sweep (sweep-[0-9a-f]{6})", out)[1]
    records = sorted(_records(), key=lambda r: r.native_id)
    assert len(records) == 2, records
    array_id = records[0].native_id.split("_")[0]
    assert [r.native_id for r in records] == [f"{array_id}_0", f"{array_id}_1"] and array_id.isdigit()
    folder = tmp_path / "out" / "tiny-sweep" / sweep_id / "slurm"
    ports = set()
    for i, record in enumerate(records):
        assert record.state == JobState.COMPLETED and record.exit_code == 0, (record, _log(record)[-3000:])
        assert record.info["array"] == array_id and record.info["spec"] == f"{folder}/{record.handle}/job.yaml"
        assert record.log_path == f"{folder}/{array_id}_{i}_0_log.out"
        log = _log(record)
        assert f"SLURM job {array_id}_{i}, run 1" in log and "done: 0 epochs, 2 steps" in log, log[-2000:]
        ports.add(re.search(r"rendezvous \S+:(\d+)", log)[1])
        assert SlurmBackend().status(record).state == JobState.COMPLETED  # scontrol/sacct take <array id>_<i>
    assert len(ports) == 2  # MASTER_PORT from each array task's own SLURM_JOB_ID: two points on one node do not collide
    assert [p.name for p in folder.glob("*_submission.sh")] == [f"{array_id}_submission.sh"]  # one sbatch
    script = (folder / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and f"#SBATCH --job-name=tiny-sweep.{sweep_id}" in script
    # One parent run, a child per point, each point's own.
    client, runs = _mlflow_runs(slurm_job_env["uri"], slurm_job_env["experiment"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, [(r.info.run_name, r.data.tags.get("mlflow.parentRunId")) for r in runs]
    assert parents[0].info.run_name == sweep_id and parents[0].info.status == "FINISHED"
    assert {r.info.run_name for r in children} == {r.handle for r in records}
    assert {r.data.params["model.mask_ratio"] for r in children} == {"0.5", "0.9"}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id and r.info.status == "FINISHED" for r in children)
    assert open_store().get_sweep(sweep_id) is not None
    print(f"\n[slurm] 2-point sweep as job array {array_id}: {elapsed:.1f}s from `maectl sweep` to both COMPLETED")
