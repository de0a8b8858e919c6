"""The SLURM backend across node boundaries, on the stack's 3-node cluster (`slurm_mn`: nodes
n1..n3, partition mn, 1 CPU each, cred_expire=10 so a requeued job runs again after ~11 s).

Everything goes through maectl (`submit`/`sweep`/`logs`/`status` in-process) with SLURM_CONF
pointing at that cluster (the backend's sinfo/sbatch/scontrol read it from the environment, and
sbatch passes it on to the job, whose rank requeues through scontrol). One host plays all nodes,
so its /tmp stands for shared storage here (the node-local check is switched off for that).

    2-node pretraining: rendezvous on the first node's name, world size 2, both ranks report the
        same all-reduced epoch loss; `logs --rank 1` and `logs --all`; the code is the snapshot
    `scontrol requeue` and a USR2 preemption of one 2-node job: both resume from the latest
        checkpoint into the same MLflow run (steps lost counted)
    a sweep as an array with throttle 1: the points never overlap
    one rank killed once (a real application failure): retried from the checkpoint, COMPLETED,
        one MLflow run; a bad-data exit (2): FAILED at once, never requeued
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from mae_core.exitcodes import ExitCode
from orchestrator import checks
from orchestrator.backends.slurm import SlurmBackend, cluster
from orchestrator.backends.states import JobState
from orchestrator.cli import main
from orchestrator.locations import PROJECT_ROOT
from orchestrator.plan import PASSED_ENV_PREFIXES
from tests.fixtures import jobs

pytestmark = pytest.mark.integration

DEMO = "pretrain-vit-tiny-demo"
HOW_TO_RUN = "`infra/stack.sh up slurm_mn && source infra/.state/env.sh` before pytest (or `infra/dev.sh test`)"
END_STATES = jobs.end_states()
INTERVAL = 2  # checkpoint.every_steps


def _require(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(f"${name} is not set: {HOW_TO_RUN}", pytrace=False)
    return value


@pytest.fixture
def mn(tmp_path, monkeypatch, demo_shards, mlflow_tracking_uri):
    """The 3-node cluster as SLURM_CONF, an isolated maectl home/output root, a fresh MLflow experiment."""
    conf, partition = _require("MAECTL_TEST_SLURM_MN_CONF"), _require("MAECTL_TEST_SLURM_MN_PARTITION")
    nodes = _require("MAECTL_TEST_SLURM_MN_NODES").split(",")
    jobs.only_env(monkeypatch, PASSED_ENV_PREFIXES, MLFLOW_TRACKING_URI=mlflow_tracking_uri)
    monkeypatch.setenv("SLURM_CONF", conf)
    out = subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N %T"], capture_output=True, text=True, timeout=30)
    states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
    if out.returncode != 0 or sorted(states) != sorted(nodes):
        pytest.fail(f"3-node SLURM not up (sinfo: {out.stdout.strip()} {out.stderr.strip()}): {HOW_TO_RUN}", pytrace=False)
    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.delenv("MAECTL_JOBS_PATH", raising=False)
    monkeypatch.setattr(checks, "NODE_LOCAL_PREFIXES", ())  # one host plays every node: its /tmp is shared
    monkeypatch.chdir(PROJECT_ROOT)
    experiment = f"test-slurm-mn-{uuid.uuid4().hex[:8]}"
    overrides = ["resources.nodes=2", "resources.tasks_per_node=1", "resources.cpus_per_task=1", "resources.mem_gb=1",
                 "resources.time_limit_min=30", f"resources.partition={partition}", "train.device=cpu", "train.log_every=1",
                 "monitor.knn_every_epochs=null", "monitor.recon_every_epochs=null", f"data.url={demo_shards}",
                 "data.batch_size=8", "data.num_workers=1", f"checkpoint.every_steps={INTERVAL}", "checkpoint.keep_last=50",
                 f"tracking.uri={mlflow_tracking_uri}", f"tracking.experiment={experiment}"]
    return {"uri": mlflow_tracking_uri, "experiment": experiment, "overrides": overrides, "nodes": nodes, "shards": demo_shards}


def _submit(mn, extra: list[str]):
    return jobs.submit(DEMO, [*mn["overrides"], *extra], "slurm")


def _log(record, rank: int = 0) -> str:
    return "".join(SlurmBackend().logs(record, rank=rank))


def _wait(record, states, timeout: float):
    return jobs.wait(SlurmBackend(), record, states, timeout)


def _wait_for(what: str, record, predicate, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout:.0f}s:\n{_log(record)[-3000:]}"
        time.sleep(0.3)
    return value


def _sacct(job_id: str, fields: str = "JobID,State,ExitCode,Start,End,NodeList") -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-D", "-j", job_id, "-o", fields], capture_output=True, text=True, timeout=30)
    names = fields.split(",")
    return [dict(zip(names, line.split("|"))) for line in out.stdout.splitlines() if line.strip()]


def _restarts(job_id: str) -> int:
    return int((cluster._scontrol_job(job_id) or {}).get("Restarts") or 0)


def _runs_in_log(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"SLURM job \S+, run (\d+):", log)]


_redone_steps = jobs.redone_steps


def _world_sizes(output_dir: str) -> list[float]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["metrics"]["config/world_size"] for line in lines if "config/world_size" in line]


def _one_mlflow_run(mn, record):
    client, runs = jobs.mlflow_runs(mn["uri"], mn["experiment"])
    assert len(runs) == 1, f"{len(runs)} MLflow runs for one job"
    assert runs[0].info.run_id == (Path(record.output_dir) / "mlflow_run_id").read_text().strip()
    return client, runs[0]


def _resumes(log: str) -> list[tuple[int, int]]:
    return [(int(c), int(s)) for c, s in re.findall(r"resumed from \S+checkpoint-(\d+)\.pt at epoch \d+, batch \d+, step (\d+)", log)]


# -- a 2-node pretraining ---------------------------------------------------------------------
def test_two_node_pretraining_ranks_agree_and_logs_per_rank(mn, capsys):
    """One epoch on 2 nodes (400 images, 8 per rank: 25 steps): rank 0 on one node, rank 1 on
    another, rendezvous on the first node's name; both print the same all-reduced epoch loss."""
    submitted = time.monotonic()
    record = _submit(mn, ["train.epochs=1"])
    assert record.info["tasks"] == 2
    # Step 1 is logged after its gradients were all-reduced with rank 1: every rank is training.
    _wait_for("both ranks training", record, lambda: "epoch 0 step 1/" in _log(record), timeout=300)
    to_training = time.monotonic() - submitted
    status = _wait(record, END_STATES, timeout=300)
    logs = [_log(record, 0), _log(record, 1)]
    assert status.state == JobState.COMPLETED, logs[0][-3000:] + logs[1][-3000:]
    nodes = [re.search(r"rank (\d) of 2 on node (\S+) \(host (\S+)\)", log).groups() for log in logs]
    assert [n[0] for n in nodes] == ["0", "1"] and nodes[0][1] != nodes[1][1] and {n[1] for n in nodes} <= set(mn["nodes"])
    assert [n[2] for n in nodes] == [n[1] for n in nodes]  # each task's hostname is its node's name
    master = re.search(r"rendezvous (\S+):(\d+)", logs[0])[1]
    assert master == nodes[0][1], master  # by node name, which resolves
    losses = [re.search(r"rank (\d) of 2: 25 steps, epoch/loss (\S+)", log) for log in logs]
    assert all(losses), logs
    assert losses[0][2] == losses[1][2] and float(losses[0][2]) > 0  # one result, to the last digit
    assert _world_sizes(record.output_dir) == [2]
    # The code the job ran is the snapshot in its job folder, taken at submission.
    snapshot = Path(record.info["folder"]) / "code"
    assert re.search(r"\[maectl\] code: (\S+)", logs[0])[1] == str(snapshot)
    assert (snapshot / "orchestrator" / "runner.py").read_bytes() == (PROJECT_ROOT / "orchestrator" / "runner.py").read_bytes()
    assert (snapshot / "SNAPSHOT").read_text().startswith("commit ")
    _, run = _one_mlflow_run(mn, record)
    assert run.info.status == "FINISHED" and run.data.tags.get("git_commit") == re.match(r"commit ([0-9a-f]+)", (snapshot / "SNAPSHOT").read_text())[1]

    # maectl logs --rank 1 / --all
    capsys.readouterr()
    assert main(["logs", record.handle, "--rank", "1"]) == 0
    assert capsys.readouterr().out == logs[1]
    assert main(["logs", record.handle, "--all"]) == 0
    out = capsys.readouterr().out.splitlines(keepends=True)
    assert [line.removeprefix("[rank 0] ") for line in out if line.startswith("[rank 0] ")] == logs[0].splitlines(keepends=True)
    assert [line.removeprefix("[rank 1] ") for line in out if line.startswith("[rank 1] ")] == logs[1].splitlines(keepends=True)
    assert main(["logs", record.handle, "--all", "--tail", "1"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"[rank {r}] {logs[r].splitlines()[-1]}" for r in (0, 1)]
    assert main(["logs", record.handle, "--rank", "2"]) == 2
    assert "has 2 rank(s), 0 to 1" in capsys.readouterr().err
    print(f"\n[slurm-mn] 2-node job: {to_training:.1f}s from submit to both ranks training; {len(logs[0].splitlines())} + "
          f"{len(logs[1].splitlines())} log lines; load {os.getloadavg()[0]:.1f}")


# -- requeue and preemption of a 2-node job ------------------------------------------------------
def test_requeue_and_usr2_preemption_of_a_two_node_job_resume_one_mlflow_run(mn):
    final = 14
    record = _submit(mn, [f"train.max_steps={final}", "slurm.max_requeues=2"])
    events = []

    def steps():
        return jobs.metric_steps(record.output_dir)

    # 1. `scontrol requeue`, between two checkpoints: SIGTERM, resume from the checkpoint on disk.
    _wait_for("a checkpoint", record, lambda: jobs.checkpoint_steps(record.output_dir))
    checkpoint = jobs.checkpoint_steps(record.output_dir)[-1]
    _wait_for("a step past the checkpoint", record, lambda: max(steps(), default=0) > checkpoint)
    events.append({"how": "scontrol requeue", "step_at": max(steps()), "checkpoint": checkpoint})
    requeued_at = time.monotonic()
    subprocess.run(["scontrol", "requeue", record.native_id], check=True, capture_output=True)
    _wait_for("run 2", record, lambda: 2 in _runs_in_log(_log(record)), timeout=120)
    events[-1]["back_s"] = time.monotonic() - requeued_at

    # 2. USR2 (SLURM's --signal warning), once the second run has checkpointed.
    resumed = _wait_for("a resume", record, lambda: _resumes(_log(record)))[-1][1]
    _wait_for("a new checkpoint", record, lambda: [s for s in jobs.checkpoint_steps(record.output_dir) if s > resumed])
    events.append({"how": "USR2", "step_at": max(steps()), "checkpoint": jobs.checkpoint_steps(record.output_dir)[-1]})
    warned_at = time.monotonic()
    subprocess.run(["scancel", "--signal=USR2", record.native_id], check=True, capture_output=True)
    _wait_for("run 3", record, lambda: 3 in _runs_in_log(_log(record)), timeout=120)
    events[-1]["back_s"] = time.monotonic() - warned_at

    status = _wait(record, END_STATES, timeout=300)
    log = _log(record)
    assert status.state == JobState.COMPLETED, log[-4000:]
    assert _runs_in_log(log) == [1, 2, 3] and _runs_in_log(_log(record, 1)) == [] and _log(record, 1).count("rank 1 of 2 on node") == 3
    resumes = _resumes(log)
    redone = _redone_steps(record.output_dir)
    assert len(resumes) == 2 and len(redone) == 2, (resumes, redone)
    for event, (checkpoint, step), lost in zip(events, resumes, redone):
        assert checkpoint == step >= event["checkpoint"], (events, resumes)
        event["steps_lost"] = lost
        assert lost <= INTERVAL, f"{event['how']}: {lost} steps lost, more than one checkpoint interval"
    assert events[1]["steps_lost"] == 0, events  # the warning: checkpoint at the next step, nothing done twice
    assert "[maectl] requeueing (restart 2 of at most 2)" in log
    assert not list((Path(record.info["spec"]).parent / "restarts").glob("*.failed"))  # neither counted as a failure
    assert set(steps()) == set(range(1, final + 1)) and _world_sizes(record.output_dir) == [2, 2, 2]
    client, run = _one_mlflow_run(mn, record)
    assert run.info.status == "FINISHED" and run.data.tags.get("resumes") == "2"
    assert {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")} == set(range(1, final + 1))
    print("\n[slurm-mn] 2-node job: " + "; ".join(f"{e['how']} at step {e['step_at']} (checkpoint {e['checkpoint']}): "
                                                 f"{e['steps_lost']} step(s) lost, running again after {e['back_s']:.1f}s"
                                                 for e in events) + f"; MLflow runs 1; load {os.getloadavg()[0]:.1f}")


# -- a sweep as a throttled array -------------------------------------------------------------------
def test_sweep_array_with_throttle_runs_one_point_at_a_time(mn, capsys):
    """Two 1-node points with slurm.array_parallelism=1: `--array=0-1%1`; with 3 free nodes they
    could run side by side, the throttle makes the second start after the first ended."""
    overrides = [o for o in mn["overrides"] if not o.startswith("resources.nodes=")]
    started = time.monotonic()
    assert main(["sweep", DEMO, "model.mask_ratio=0.5,0.9", *overrides, "resources.nodes=1", "train.max_steps=2",
                 "slurm.array_parallelism=1", "--backend", "slurm", "--wait"]) == 0, capsys.readouterr()
    elapsed = time.monotonic() - started
    records = sorted(jobs.records(), key=lambda r: r.native_id)
    assert len(records) == 2 and all(r.state == JobState.COMPLETED for r in records), records
    array_id = records[0].native_id.split("_")[0]
    script = next(Path(records[0].info["folder"]).glob(f"{array_id}_submission.sh")).read_text()
    assert "#SBATCH --array=0-1%1" in script
    deadline = time.monotonic() + 60  # accounting (slurmdbd) can trail the job's own end by seconds
    while True:
        spans = {row["JobID"]: row for row in _sacct(array_id)}
        first, second = spans.get(f"{array_id}_0", {}), spans.get(f"{array_id}_1", {})
        if first.get("State") == second.get("State") == "COMPLETED" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert first["State"] == second["State"] == "COMPLETED", spans
    assert second["Start"] >= first["End"], spans  # ISO timestamps: never side by side
    print(f"\n[slurm-mn] 2-point sweep, throttle 1: {elapsed:.1f}s; point 1 {first['Start']}..{first['End']}, "
          f"point 2 {second['Start']}..{second['End']}")


# -- application failures ---------------------------------------------------------------------------
def test_killed_rank_is_retried_from_the_checkpoint_and_bad_data_is_not(mn, tmp_path):
    final = 10
    record = _submit(mn, [f"train.max_steps={final}", "slurm.max_restarts=1"])
    _wait_for("a checkpoint", record, lambda: jobs.checkpoint_steps(record.output_dir))
    checkpoint = jobs.checkpoint_steps(record.output_dir)[-1]
    _wait_for("a step past the checkpoint", record, lambda: max(jobs.metric_steps(record.output_dir), default=0) > checkpoint)
    pid = _wait_for("rank 1's process", record, lambda: jobs.slurm_task_pid(record.native_id, 1))
    step_at = max(jobs.metric_steps(record.output_dir))
    os.kill(pid, signal.SIGKILL)  # a real failure of one rank (as a node's process dying); its peer's collective fails
    status = _wait(record, END_STATES, timeout=300)
    log = _log(record)
    assert status.state == JobState.COMPLETED, log[-4000:]
    assert re.search(r"application failure on rank 0 \(exit 1\): requeueing the job, retry 1 of at most 1", log), log[-4000:]
    assert _runs_in_log(log) == [1, 2] and _restarts(record.native_id) == 1
    ((resumed_from, _),) = _resumes(log)
    assert resumed_from >= checkpoint
    (lost,) = _redone_steps(record.output_dir)
    assert lost <= INTERVAL, f"{lost} steps lost, more than one checkpoint interval"
    assert set(jobs.metric_steps(record.output_dir)) == set(range(1, final + 1))
    client, run = _one_mlflow_run(mn, record)
    assert run.info.status == "FINISHED" and run.data.tags.get("resumes") == "1"
    markers = list((Path(record.info["spec"]).parent / "restarts").glob("*.failed"))
    assert len(markers) == 1 and "rank 0" in markers[0].read_text()

    # Bad data at run time (the shards vanish after the submit-time check): exit 2, no retry.
    shards = tmp_path / "shards"
    subprocess.run(["cp", "-r", mn["shards"], str(shards)], check=True)
    assert main(["submit", DEMO, *mn["overrides"], f"data.url={shards}", "train.max_steps=4", "slurm.max_restarts=2",
                 "tracking.enabled=false", "--backend", "slurm"]) == 0
    bad = next(r for r in jobs.records() if r.handle != record.handle)
    subprocess.run(["rm", "-rf", str(shards)], check=True)
    status = _wait(bad, END_STATES, timeout=180)
    bad_log = _log(bad)
    assert status.state == JobState.FAILED and status.exit_code == ExitCode.BAD_INPUT, (status, bad_log[-3000:])
    assert _restarts(bad.native_id) == 0 and _runs_in_log(bad_log) == [1] and "requeueing" not in bad_log
    print(f"\n[slurm-mn] rank 1 killed at step {step_at} (checkpoint {checkpoint}): retried once, resumed from step "
          f"{resumed_from}, {lost} step(s) redone, COMPLETED, 1 MLflow run; bad data: FAILED exit 2, 0 restarts")
