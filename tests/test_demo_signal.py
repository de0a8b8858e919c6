"""The demo shows a real signal: pretraining beats the same encoder at its random initialisation.

Trains the shipped demo job (`jobs/pretrain-vit-tiny-demo.yaml`, resolved as `maectl demo` would)
cut to 20 of its 40 epochs on the default demo dataset. The run measures, itself, the encoder at
its random initialisation before the first step (`monitor.baseline_at_init`) and after the last
epoch: kNN top-1 and a feature probe on the 200 held-out val images, mean-pooled features. The
test reads both from the run's metrics, as `maectl demo` and MLflow do, and asks for a margin.

Measured (2 CPU cores): the full 40-epoch job gives kNN 74.0 vs 47.0 (seed 0) and 70.5 vs 46.5
(seed 1). A 30-epoch cut of a 60-epoch schedule gave +20.5 to +27 points over three seeds; after
2 epochs the lead was ~0, so the check fails when pretraining teaches the encoder nothing.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

EPOCHS = 20
MARGIN = 10.0  # points of kNN top-1; about half the lead measured at this length


def test_pretrained_encoder_beats_its_random_initialisation(tmp_path, monkeypatch):
    from mae_core.data.demo import build_demo_shards
    from mae_core.engine import train
    from mae_core.engine.sinks import JsonlSink, read_jsonl_metrics
    from orchestrator.experiments import resolve

    monkeypatch.delenv("MAECTL_JOBS_PATH", raising=False)  # the shipped job file, not a private one
    shards = tmp_path / "shards"
    build_demo_shards(str(tmp_path / "images"), str(shards))  # the demo's defaults: 1000 train, 200 val
    out = tmp_path / "out"
    run = resolve("pretrain-vit-tiny-demo", [f"data.url={shards}", f"output_dir={out}", f"train.epochs={EPOCHS}",
                                             "monitor.recon_every_epochs=null"],
                  output_root=str(out), check_data=False).run
    assert run.monitor.knn_pool == "avg" and run.monitor.baseline_at_init and run.train.seed == 0

    sink = JsonlSink(str(tmp_path / "metrics.jsonl"))
    try:
        summary = train(run, sink=sink).metrics
    finally:
        sink.close()
    records = read_jsonl_metrics(str(tmp_path / "metrics.jsonl"))
    first = next(r for r in records if "knn/top1_random_init" in r["metrics"])
    assert first["step"] == 0  # measured before the first optimizer step
    random_init = first["metrics"]["knn/top1_random_init"]
    pretrained = [r["metrics"]["knn/top1"] for r in records if "knn/top1" in r["metrics"]][-1]
    assert summary["knn/top1"] == pretrained and summary["knn/top1_random_init"] == random_init
    assert summary["knn/top1_gain"] == pytest.approx(pretrained - random_init)

    print(f"kNN top-1 after {EPOCHS} epochs: pretrained {pretrained:.1f}%, random init {random_init:.1f}%; "
          f"probe {summary['probe/top1']:.1f}% vs {summary['probe/top1_random_init']:.1f}%")
    assert 10.0 < random_init < pretrained  # above chance (10 classes) at init: the baseline is a real one
    assert pretrained >= random_init + MARGIN, (
        f"pretrained {pretrained:.1f}% vs random init {random_init:.1f}%: less than {MARGIN} points apart")
