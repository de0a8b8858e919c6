"""The fine-tuning / linear-probe ViT and its optimizer parameter groups."""

import pytest
import torch

from mae_core import build_model
from mae_core.models import ClassifierConfig, VisionTransformerClassifier, classifier_from_mae
from mae_core.optim import layer_id, param_groups_lrd, param_groups_weight_decay
from mae_core.weights import CheckpointFormatError, load_pretrained

MICRO = "mae_vit_micro_patch4_32"


def test_mae_weights_into_a_token_pool_classifier_give_the_mae_features():
    torch.manual_seed(0)
    mae = build_model(MICRO).eval()
    clf = classifier_from_mae(mae.config, num_classes=10, global_pool="token").eval()
    report = load_pretrained(clf, mae.state_dict())
    assert sorted(report.missing) == ["head.bias", "head.weight"]
    assert all(k.startswith("decoder_") or k == "mask_token" for k in report.unexpected)
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf.forward_features(imgs), mae.extract_features(imgs), atol=1e-5, rtol=1e-5)
    assert clf(imgs).shape == (2, 10)


def test_avg_pool_classifier_reports_fc_norm_missing_and_norm_unexpected():
    mae = build_model(MICRO)
    clf = classifier_from_mae(mae.config, num_classes=5, global_pool="avg", drop_path=0.1)
    report = load_pretrained(clf, {"model": mae.state_dict()})
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert {"norm.weight", "norm.bias"} <= set(report.unexpected)
    assert "fc_norm.* (2)" in str(report)


def test_finetuned_checkpoint_with_another_class_count_skips_the_head_loudly():
    mae_config = build_model(MICRO).config
    finetuned = classifier_from_mae(mae_config, num_classes=1000, global_pool="avg")
    clf = classifier_from_mae(mae_config, num_classes=10, global_pool="avg")
    head_before = clf.head.weight.clone()
    report = load_pretrained(clf, {"model": finetuned.state_dict()})
    assert not report.missing and not report.unexpected and not report.complete
    assert [line.split(":")[0] for line in report.skipped] == ["head.weight", "head.bias"]
    assert "skipped head.weight: (1000, 64) in the checkpoint, (10, 64) in the model" in str(report)
    assert torch.equal(clf.head.weight, head_before)
    torch.testing.assert_close(clf.fc_norm.weight, finetuned.fc_norm.weight)
    with pytest.raises(CheckpointFormatError, match="skipped head"):
        load_pretrained(clf, finetuned.state_dict(), strict=True)


def test_drop_path_schedule_and_head_init():
    clf = VisionTransformerClassifier(ClassifierConfig(img_size=32, patch_size=4, embed_dim=64, depth=5,
                                                       num_heads=4, num_classes=3, drop_path=0.2))
    rates = [block.drop_path.prob for block in clf.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    assert clf.head.weight.abs().max() < 2e-4 and (clf.head.bias == 0).all()
    assert clf.no_weight_decay() == {"cls_token", "pos_embed"}


def test_linear_probe_head_and_other_resolution():
    clf = classifier_from_mae(build_model(MICRO).config, num_classes=4, global_pool="token",
                              head_batchnorm=True, head_init_std=0.01, img_size=48)
    assert isinstance(clf.head[0], torch.nn.BatchNorm1d) and not clf.head[0].affine
    assert clf(torch.randn(3, 3, 48, 48)).shape == (3, 4)
    assert clf(torch.randn(3, 3, 32, 32)).shape == (3, 4)  # pos embed resampled on the fly


def test_bad_classifier_config():
    with pytest.raises(ValueError, match="global_pool"):
        ClassifierConfig(global_pool="max")


def test_layer_wise_lr_decay_groups():
    clf = classifier_from_mae(build_model(MICRO).config, num_classes=3)  # depth 4
    depth = 4
    assert layer_id("cls_token", depth) == layer_id("pos_embed", depth) == layer_id("patch_embed.proj.weight", depth) == 0
    assert layer_id("blocks.2.attn.qkv.weight", depth) == 3
    assert layer_id("fc_norm.weight", depth) == layer_id("head.weight", depth) == depth + 1
    groups = param_groups_lrd(clf, weight_decay=0.05, layer_decay=0.5)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(clf.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert by_param[id(named["head.weight"])]["lr_scale"] == 1.0
    assert by_param[id(named["blocks.3.mlp.fc1.weight"])]["lr_scale"] == 0.5
    assert by_param[id(named["patch_embed.proj.weight"])]["lr_scale"] == 0.5**5
    for name in ("cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"):
        assert by_param[id(named[name])]["weight_decay"] == 0.0, name
    for name in ("blocks.0.attn.qkv.weight", "head.weight", "patch_embed.proj.weight"):
        assert by_param[id(named[name])]["weight_decay"] == 0.05, name
    torch.optim.AdamW(groups, lr=1e-3)  # the groups are valid optimizer input


def test_pretraining_weight_decay_groups():
    """The release's pretraining decays cls_token and mask_token (decay_tokens, the default);
    decay_tokens=False exempts them, as this project did before."""
    mae = build_model(MICRO)
    names = {id(p): n for n, p in mae.named_parameters()}
    decay, no_decay = param_groups_weight_decay(mae, 0.05)
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "mask_token", "blocks.0.attn.qkv.weight", "decoder_embed.weight", "patch_embed.proj.weight"} <= decayed
    assert {"blocks.0.norm1.weight", "decoder_pred.bias"} <= exempt
    assert "pos_embed" not in decayed | exempt  # frozen
    assert len(decayed | exempt) == sum(p.requires_grad for p in mae.parameters())

    old_decay, old_exempt = param_groups_weight_decay(mae, 0.05, decay_tokens=False)
    old_decayed = {names[id(p)] for p in old_decay["params"]}
    assert {"cls_token", "mask_token"} <= {names[id(p)] for p in old_exempt["params"]}
    assert old_decayed == decayed - {"cls_token", "mask_token"}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_fine_tune_at_a_higher_resolution_resamples_pos_embed_once_at_load(tmp_path, monkeypatch):
    """The 448 px recipe on a 224 px encoder (here 64 px on the 32 px micro model): the task builds
    the classifier at data.img_size, load_pretrained resamples pos_embed once, and forward never does."""
    import mae_core.models.classifier as classifier_module
    from mae_core.engine.config import load_run_config
    from mae_core.engine.distributed import DistEnv
    from mae_core.engine.tasks import FinetuneTask
    from mae_core.weights import save_model

    mae = build_model(MICRO)
    save_model(mae, tmp_path / "mae.pt")
    cfg = load_run_config({"task": "finetune", "output_dir": str(tmp_path), "model": {"name": MICRO},
                           "data": {"url": "/data", "img_size": 64, "batch_size": 4},
                           "finetune": {"num_classes": 10, "mixup": 0, "cutmix": 0},
                           "checkpoint": {"init_from": str(tmp_path / "mae.pt")}})
    assert cfg.model.arch.img_size == 32
    task = FinetuneTask(cfg, DistEnv(), torch.device("cpu"))
    model = task.model
    assert model.config.img_size == 64 and model.pos_embed.shape == (1, 1 + 16 * 16, mae.config.embed_dim)
    torch.testing.assert_close(model.pos_embed[:, :1], mae.pos_embed[:, :1])  # the cls slot is kept as it is

    calls = []
    real = classifier_module.resample_pos_embed
    monkeypatch.setattr(classifier_module, "resample_pos_embed", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert calls == []  # nothing resampled on the forward of the training resolution
    model(torch.randn(1, 3, 32, 32))  # another resolution still works, by resampling on the fly
    assert len(calls) == 1
