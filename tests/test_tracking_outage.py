"""Tracking through an MLflow outage: nothing lost, nothing waits. Against a private `mlflow server`
(its own port and SQLite file, bench.tracking.OwnMLflowServer) that the tests hang (SIGSTOP), kill
and restart; never the shared stack's server. Not timed: step-time figures are bench.tracking's."""

from __future__ import annotations

import uuid

import pytest

from bench.tracking import OwnMLflowServer, job_spec, train_with_outage

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    server = OwnMLflowServer(tmp_path_factory.mktemp("own-mlflow"))
    server.start()
    yield server
    server.kill()


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_metrics_and_artifacts_logged_while_the_server_hangs_or_is_down_all_arrive(own_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import open_run

    spec = job_spec(own_server.uri, f"outage-{uuid.uuid4().hex[:6]}", str(tmp_path / "no-shards"), tmp_path / "out")
    sink = open_run(spec, str(tmp_path / "out"))
    assert sink.run_id
    picture = tmp_path / "picture.txt"
    picture.write_text("logged while the server was stopped")
    step = 0

    def log(n: int) -> None:
        nonlocal step
        for _ in range(n):
            step += 1
            sink.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-3}, step)

    log(50)
    own_server.hang()  # accepts connections, never answers
    try:
        log(100)
        sink.log_metrics({"epoch": 1.0, "epoch/loss": 0.5}, step)  # an epoch record asks for a send now: must not wait
        sink.log_artifact(str(picture), "during-outage")
        queued, jobs = sink.sender.pending()
        assert queued + jobs > 0, "nothing waited: the server cannot have taken it while stopped"
    finally:
        own_server.resume()
    log(20)
    own_server.kill()  # down: connections refused
    log(30)
    own_server.start()
    log(10)
    assert sink.close("FINISHED"), "the flush at close did not get everything through"

    client = MlflowClient(own_server.uri)
    run = client.get_run(sink.run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, sink.run_id, "train/loss") == list(range(1, step + 1))
    assert _steps(client, sink.run_id, "train/lr") == list(range(1, step + 1))
    assert _steps(client, sink.run_id, "epoch/loss") == [150]
    assert [a.path for a in client.list_artifacts(sink.run_id, "during-outage")] == ["during-outage/picture.txt"]
    assert "config/resolved.yaml" in {a.path for a in client.list_artifacts(sink.run_id, "config")}


def test_a_server_down_when_the_job_starts_gets_the_run_once_it_answers(own_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import RUN_ID_FILE, open_run

    out = tmp_path / "out"
    spec = job_spec(own_server.uri, f"late-{uuid.uuid4().hex[:6]}", str(tmp_path / "no-shards"), out)
    own_server.kill()
    try:
        sink = open_run(spec, str(out), wait_s=1.0)
        assert sink.run_id is None and not (out / RUN_ID_FILE).exists()  # training starts without it
        for step in range(1, 41):
            sink.log_metrics({"train/loss": 1.0 / step}, step)
    finally:
        own_server.start()
    assert sink.close("FINISHED")
    assert (out / RUN_ID_FILE).read_text().strip() == sink.run_id
    client = MlflowClient(own_server.uri)
    assert client.get_run(sink.run_id).info.status == "FINISHED"
    assert _steps(client, sink.run_id, "train/loss") == list(range(1, 41))


def test_the_real_training_loop_through_a_hang_loses_no_metric(own_server, tmp_path, demo_shards):
    """The tiny model in the real engine, through the runner's sink, the server stopped for 8 s."""
    result = train_with_outage(own_server, demo_shards, tmp_path / "train", outage="hang", experiment="outage-train",
                               warmup_s=2.0, outage_s=8.0, tail_s=2.0)
    assert result["steps"] > 0 and result["metrics"] > 0
    assert result["missing"] == 0 and result["complete"] and result["status"] == "FINISHED", result


CHILD = """
import json, pathlib, sys, time
from mae_core.engine.sinks import JsonlSink
from orchestrator.tracking import open_run

out, phase = sys.argv[1], pathlib.Path(sys.argv[2])
spec = json.loads(sys.argv[3])
jsonl, sink = JsonlSink(out + "/metrics.jsonl"), open_run(spec, out)

def log(steps):
    for step in steps:
        jsonl.log_metrics({"train/loss": 1.0 / step}, step)
        sink.log_metrics({"train/loss": 1.0 / step}, step)

log(range(1, 51))
assert sink.sender.drain(60)
phase.write_text("sent")
while not phase.with_suffix(".hung").exists():
    time.sleep(0.05)
log(range(51, 101))
phase.write_text("queued")
time.sleep(600)
"""


def test_metrics_of_a_job_killed_during_an_outage_reach_the_run_when_it_resumes(own_server, tmp_path):
    """SIGKILL while the server hangs: what was queued is lost from memory but is in metrics.jsonl;
    the resumed job (same output folder, same run) sends it before going on, without duplicates."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow.tracking import MlflowClient

    from orchestrator.locations import PROJECT_ROOT
    from orchestrator.tracking import open_run

    out = tmp_path / "out"
    out.mkdir()
    spec = job_spec(own_server.uri, f"killed-{uuid.uuid4().hex[:6]}", str(tmp_path / "no-shards"), out)
    spec["resolved"]["checkpoint"]["resume"] = "auto"
    phase = tmp_path / "phase"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(phase), json.dumps(spec)], cwd=PROJECT_ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (phase.exists() and phase.read_text() == "sent"):
            assert child.poll() is None and time.monotonic() < deadline, "the child did not get its first metrics through"
            time.sleep(0.1)
        own_server.hang()
        phase.with_suffix(".hung").write_text("1")
        while phase.read_text() != "queued":
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        own_server.resume()

    sink = open_run(spec, str(out))  # the restart: continues the run named in mlflow_run_id
    for step in range(95, 111):  # replayed from a checkpoint at step 94, then new steps
        sink.log_metrics({"train/loss": 1.0 / step}, step)
    assert sink.close("FINISHED")
    assert _steps(MlflowClient(own_server.uri), sink.run_id, "train/loss") == list(range(1, 111))
