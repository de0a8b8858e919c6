"""`maectl report`: a real 3-point tiny sweep with a linear-probe follow-up per point, against the
stack's MLflow server; the table, CSV and plot are checked against the runs themselves."""

from __future__ import annotations

import csv
import re
import uuid
from pathlib import Path

import pytest

from orchestrator.report import Report, Row
from tests.test_orchestrator_cli import clean_env, maectl

SWEEP = """\
description: a tiny mask-ratio sweep with a linear probe per point
model: {{name: mae_vit_micro_patch4_32, norm_pix_loss: true}}
optim: {{lr: 2.0e-3, warmup_epochs: 1}}
train: {{epochs: 1, log_every: 4}}
sweep: {{model.mask_ratio: [0.25, 0.5, 0.75]}}
pipeline: {{then: [{linprobe}]}}
"""
LINPROBE = """\
description: a tiny linear probe
task: linprobe
model: {{name: mae_vit_micro_patch4_32}}
optim: {{name: lars, base_lr: 0.1, weight_decay: 0.0, warmup_epochs: 0}}
train: {{epochs: 1, log_every: 4}}
finetune: {{num_classes: 10, global_pool: token, mixup: 0.0, cutmix: 0.0, label_smoothing: 0.0}}
"""
COMMON = """\
resources: {{nodes: 1, gpus_per_node: 0, tasks_per_node: 1, cpus_per_task: 1, time_limit_min: 10}}
data: {{url: {data}, img_size: 32, batch_size: 50, num_workers: 0, shuffle_buffer: 64}}
checkpoint: {{keep_every_epochs: null}}
tracking: {{enabled: true}}
"""


def test_report_renders_any_swept_value_and_missing_results():
    rows = [Row("local-a", {"model.decoder_depth": 1}, "FINISHED", 0.41, {"linear probe": 55.5}),
            Row("local-b", {"model.decoder_depth": 8}, "FAILED", None, {})]
    report = Report("t", ["model.decoder_depth"], rows, ["linear probe"], "sqlite:///x")
    lines = report.markdown().splitlines()
    assert lines[2] == "| # | model.decoder_depth | job | status | pretrain loss | linear probe top-1 |"
    assert lines[4] == "| 1 | 1 | local-a | FINISHED | 0.4100 | 55.50 |" and lines[5] == "| 2 | 8 | local-b | FAILED | - | - |"
    assert list(csv.reader(report.csv().splitlines()))[2] == ["2", "8", "local-b", "FAILED", "", "", ""]
    assert report._x_axis()[0] == [1.0, 8.0]


@pytest.mark.slow
@pytest.mark.integration
def test_report_of_a_real_sweep_with_linear_probes(tmp_path, demo_shards, mlflow_tracking_uri):
    from mlflow.tracking import MlflowClient

    common = COMMON.format(data=demo_shards)
    linprobe = tmp_path / "tiny-linprobe.yaml"
    linprobe.write_text(LINPROBE.format() + common)
    sweep_file = tmp_path / "tiny-sweep.yaml"
    sweep_file.write_text(SWEEP.format(linprobe=linprobe) + common)
    env = clean_env(tmp_path)
    experiment = f"tiny-report-{uuid.uuid4().hex[:8]}"  # the server outlives test sessions
    result = maectl(["sweep", str(sweep_file), "--backend", "local", f"tracking.uri={mlflow_tracking_uri}",
                     f"tracking.experiment={experiment}", "--wait"], env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    sweep_id = re.search(r"submitted sweep (sweep-[0-9a-f]{6})", result.stdout)[1]

    out = tmp_path / "report"
    report = maectl(["report", sweep_id, "--out", str(out)], env, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr

    client = MlflowClient(mlflow_tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = next(r for r in runs if r.data.tags.get("maectl.kind") == "sweep")
    points = {r.data.tags["handle"]: r for r in runs if r.data.tags.get("sweep_point")}
    probes = {r.data.tags["pipeline.after"]: r for r in runs if r.data.tags.get("pipeline.after")}
    assert len(points) == 3 and set(probes) == set(points)

    rows = list(csv.DictReader((out / "table.csv").read_text().splitlines()))
    assert [float(r["model.mask_ratio"]) for r in rows] == [0.25, 0.5, 0.75]
    for row in rows:
        point, probe = points[row["job"]], probes[row["job"]]
        assert float(point.data.params["model.mask_ratio"]) == float(row["model.mask_ratio"])
        assert float(row["pretrain_loss"]) == pytest.approx(point.data.metrics["epoch/loss"])
        assert float(row["linear_probe_top1"]) == pytest.approx(probe.data.metrics["eval/top1"])
        assert row["status"] == "FINISHED" and row["run_id"] == point.info.run_id
    table = (out / "table.md").read_text()
    assert "| # | model.mask_ratio | job | status | pretrain loss | linear probe top-1 |" in table
    assert table in report.stdout.replace("\r", "") or all(r["job"] in report.stdout for r in rows)
    png = (out / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {"report/table.md", "report/table.csv", "report/plot.png"}

    # The same jobs named one by one: the param they differ in is found as the swept key.
    by_jobs = maectl(["report", *[r["job"] for r in rows], "--out", str(tmp_path / "by-jobs")], env, timeout=120)
    assert by_jobs.returncode == 0, by_jobs.stdout + by_jobs.stderr
    again = list(csv.DictReader((tmp_path / "by-jobs" / "table.csv").read_text().splitlines()))
    assert [(r["model.mask_ratio"], r["linear_probe_top1"]) for r in again] == [(r["model.mask_ratio"], r["linear_probe_top1"]) for r in rows]
    assert not Path(tmp_path / "by-jobs" / "plot.png").stat().st_size == 0


def test_report_of_an_unknown_target_is_a_usage_error(tmp_path):
    result = maectl(["report", "local-nothere"], clean_env(tmp_path))
    assert result.returncode == 2 and "no job 'local-nothere'" in result.stderr
