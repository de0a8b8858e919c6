"""The engines end to end on the tiny demo dataset, in process (one rank) on CPU."""


import pytest
import torch

from mae_core.data import DataError
from mae_core.engine import JsonlSink, NonFiniteLoss, load_run_config, train
from mae_core.engine.checkpointing import CheckpointError, CheckpointManager, load_checkpoint
from mae_core.engine.sinks import read_jsonl_metrics

pytestmark = pytest.mark.slow


def _pretrain_config(data_url, out, **train):
    return {
        "task": "pretrain",
        "output_dir": str(out),
        "model": {"name": "mae_vit_micro_patch4_32", "norm_pix_loss": True},
        "data": {"url": data_url, "img_size": 32, "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "optim": {"lr": 2e-3, "warmup_epochs": 1},
        "train": {"epochs": 3, "seed": 0, "log_every": 5, **train},
        "checkpoint": {"every_steps": 10, "keep_last": 2, "keep_every_epochs": None},
        "monitor": {"knn_every_epochs": 3, "knn_k": 5, "recon_every_epochs": 3, "recon_images": 4},
    }


@pytest.fixture(scope="module")
def pretrained(demo_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    cfg = load_run_config(_pretrain_config(demo_shards, out))
    sink = JsonlSink(str(out / "metrics.jsonl"))
    summary = train(cfg, sink)
    sink.close()
    return out, summary


def test_pretraining_learns_and_reports(pretrained):
    out, summary = pretrained
    records = read_jsonl_metrics(str(out / "metrics.jsonl"))
    epochs = [r["metrics"] for r in records if "epoch/loss" in r["metrics"]]
    assert len(epochs) == 3
    assert epochs[-1]["epoch/loss"] < epochs[0]["epoch/loss"]
    assert 0.0 <= epochs[-1]["knn/top1"] <= 100.0
    steps = [r for r in records if "train/loss" in r["metrics"]]
    assert [r["step"] for r in steps] == list(range(1, summary.final_step + 1))
    logged = {k for r in steps for k in r["metrics"]}
    assert {"train/lr", "train/grad_norm", "train/images_per_s", "train/eta_s", "data/skipped", "mem/peak_mb"} <= logged
    assert (out / "images" / "reconstruction-epoch0003.png").stat().st_size > 1000


def test_final_exports_load_strictly(pretrained):
    out, _ = pretrained
    timm = pytest.importorskip("timm")
    encoder = torch.load(out / "final" / "encoder_timm.pt", weights_only=True)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, qkv_bias=True, num_classes=0, global_pool="token"
    )
    vit.load_state_dict(encoder, strict=True)
    ours = torch.load(out / "final" / "mae.pt", weights_only=True)
    assert ours["model_config"]["embed_dim"] == 64


def test_checkpoint_holds_everything_resumable(pretrained):
    out, summary = pretrained
    state = load_checkpoint(summary.last_checkpoint)
    assert state["position"] == {"epoch": 3, "batch": 0, "opt_step": summary.final_step}
    assert {"model", "optimizer", "rng", "config", "model_config", "scaler", "task_state"} <= set(state)
    assert state["config"]["model"]["name"] == "mae_vit_micro_patch4_32"
    assert len(state["rng"]) == 1 and "mask" in state["rng"][0]["generators"]


def test_restart_of_a_finished_run_resumes_and_does_nothing(pretrained, demo_shards):
    out, summary = pretrained
    cfg = load_run_config(_pretrain_config(demo_shards, out))
    again = train(cfg)
    assert again.resumed_from == summary.last_checkpoint
    assert again.final_step == summary.final_step


def test_fine_tune_and_linear_probe_from_our_checkpoint(pretrained, demo_shards, tmp_path):
    out, _ = pretrained
    for task, optim in (("finetune", {"base_lr": 1e-3, "layer_decay": 0.75, "warmup_epochs": 0, "betas": [0.9, 0.999]}),
                        ("linprobe", {"name": "lars", "base_lr": 0.1, "weight_decay": 0.0, "warmup_epochs": 0})):
        cfg = load_run_config({
            "task": task,
            "output_dir": str(tmp_path / task),
            "model": {"name": "mae_vit_micro_patch4_32"},
            "data": {"url": demo_shards, "img_size": 32, "batch_size": 16, "num_workers": 0},
            "optim": optim,
            "train": {"epochs": 1},
            "checkpoint": {"init_from": str(out / "final" / "mae.pt")},
            "finetune": {"num_classes": 10, "drop_path": 0.1},
        })
        summary = train(cfg)
        assert 0.0 <= summary.metrics["eval/top1"] <= 100.0
        assert summary.metrics["eval/top5"] >= summary.metrics["eval/top1"]
        assert summary.metrics["eval/best_top1"] == summary.metrics["eval/top1"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(demo_shards, tmp_path):
    cfg = _pretrain_config(demo_shards, tmp_path, epochs=1)
    cfg["optim"] = {"lr": 100.0, "warmup_epochs": 0}
    cfg["checkpoint"] = {"every_steps": 1, "keep_last": 5, "keep_every_epochs": None}
    with pytest.raises(NonFiniteLoss, match=r"at optimizer step \d+") as info:
        train(load_run_config(cfg))
    latest = CheckpointManager(str(tmp_path)).latest()
    assert latest is not None, "at least one good step should have been checkpointed before the blow-up"
    assert latest.path in str(info.value)
    state = load_checkpoint(latest.path)
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_model_mismatch_with_checkpoint_is_refused(pretrained, demo_shards):
    out, _ = pretrained
    cfg = _pretrain_config(demo_shards, out)
    cfg["model"]["decoder_depth"] = 3
    with pytest.raises(CheckpointError, match="decoder_depth"):
        train(load_run_config(cfg))


def test_empty_dataset_is_refused_before_training(demo_shards, tmp_path):
    cfg = _pretrain_config(demo_shards, tmp_path)
    cfg["data"]["batch_size"] = 100000
    with pytest.raises(DataError, match="fewer than one batch"):
        train(load_run_config(cfg))
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").glob("checkpoint-*.pt"))


def test_fine_tune_without_weights_is_refused_before_training(demo_shards, tmp_path):
    from mae_core.structured import ConfigError

    cfg = load_run_config({
        "task": "finetune", "output_dir": str(tmp_path), "model": {"name": "mae_vit_micro_patch4_32"},
        "data": {"url": demo_shards, "img_size": 32, "batch_size": 16, "num_workers": 0},
        "finetune": {"num_classes": 10},
    })
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert info.value.key == "checkpoint.init_from"
    assert not list(tmp_path.glob("checkpoints/checkpoint-*.pt"))


def test_feature_probe_separates_what_is_separable_and_nothing_else():
    """The monitor's linear probe on frozen features (monitor.feature_probe)."""
    from mae_core.engine.knn import linear_probe_top1

    torch.manual_seed(0)
    centres = torch.randn(5, 16) * 3
    labels = torch.arange(600) % 5
    features = centres[labels] + torch.randn(600, 16)
    assert linear_probe_top1(features[:400], labels[:400], features[400:], labels[400:]) > 95
    shuffled = labels[torch.randperm(600)]  # labels unrelated to the features: chance (20%)
    assert linear_probe_top1(features[:400], shuffled[:400], features[400:], shuffled[400:]) < 35
