"""Checkpoints in and out: official-format dicts, resampling, timm export, our own file format."""

import argparse
import os

import pytest
import torch

from mae_core import build_model
from mae_core.models import classifier_from_mae
from mae_core.pos_embed import resample_pos_embed
from mae_core.weights import (
    FORMAT_MAE,
    CheckpointFormatError,
    export_timm_encoder,
    filter_state_dict,
    load_model,
    load_pretrained,
    save_model,
)

MICRO = "mae_vit_micro_patch4_32"


def official_shapes(dim, depth, dec_dim, dec_depth, patch, grid, chans=3, encoder_only=False):
    """Key -> shape of an official-release state dict, written from REFERENCE.md's key list."""
    tokens = grid * grid + 1

    def block(prefix, d):
        return {
            f"{prefix}norm1.weight": (d,), f"{prefix}norm1.bias": (d,),
            f"{prefix}attn.qkv.weight": (3 * d, d), f"{prefix}attn.qkv.bias": (3 * d,),
            f"{prefix}attn.proj.weight": (d, d), f"{prefix}attn.proj.bias": (d,),
            f"{prefix}norm2.weight": (d,), f"{prefix}norm2.bias": (d,),
            f"{prefix}mlp.fc1.weight": (4 * d, d), f"{prefix}mlp.fc1.bias": (4 * d,),
            f"{prefix}mlp.fc2.weight": (d, 4 * d), f"{prefix}mlp.fc2.bias": (d,),
        }

    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim),
              "patch_embed.proj.weight": (dim, chans, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        shapes.update(block(f"blocks.{i}.", dim))
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    if encoder_only:
        return shapes
    shapes.update({"decoder_embed.weight": (dec_dim, dim), "decoder_embed.bias": (dec_dim,),
                   "mask_token": (1, 1, dec_dim), "decoder_pos_embed": (1, tokens, dec_dim)})
    for i in range(dec_depth):
        shapes.update(block(f"decoder_blocks.{i}.", dec_dim))
    shapes.update({"decoder_norm.weight": (dec_dim,), "decoder_norm.bias": (dec_dim,),
                   "decoder_pred.weight": (patch * patch * chans, dec_dim), "decoder_pred.bias": (patch * patch * chans,)})
    return shapes


def official_state_dict(**kwargs):
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=gen) * 0.02 for k, s in official_shapes(**kwargs).items()}


MICRO_SHAPE = dict(dim=64, depth=4, dec_dim=64, dec_depth=2, patch=4, grid=8)


def test_official_layout_at_full_size():
    with torch.device("meta"):
        model = build_model("mae_vit_base_patch16")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_shapes(dim=768, depth=12, dec_dim=512, dec_depth=8, patch=16, grid=14)


def test_official_full_checkpoint_loads_strictly(tmp_path):
    sd = official_state_dict(**MICRO_SHAPE)
    path = tmp_path / "checkpoint-799.pth"
    # The release's training checkpoints: model + optimizer + epoch + an argparse Namespace.
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "args": argparse.Namespace(model="mae_vit_micro", blr=1.5e-4)}, path)
    model = build_model(MICRO)
    report = load_pretrained(model, path, strict=True)
    assert report.complete and not report.resampled and len(report.loaded) == len(sd)
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_encoder_only_checkpoint_reports_the_decoder_missing():
    model = build_model(MICRO)
    decoder_before = model.decoder_pred.weight.clone()
    report = load_pretrained(model, {"model": official_state_dict(**MICRO_SHAPE, encoder_only=True)})
    assert not report.unexpected
    assert set(report.missing) == set(official_shapes(**MICRO_SHAPE)) - set(official_shapes(**MICRO_SHAPE, encoder_only=True))
    assert "mask_token" in report.missing and any(k.startswith("decoder_blocks.") for k in report.missing)
    assert torch.equal(model.decoder_pred.weight, decoder_before)
    assert "missing (" in str(report) and "decoder_blocks.* (24)" in str(report)
    with pytest.raises(CheckpointFormatError, match="strict load failed"):
        load_pretrained(build_model(MICRO), official_state_dict(**MICRO_SHAPE, encoder_only=True), strict=True)


def test_wrapper_prefixes_are_stripped():
    sd = official_state_dict(**MICRO_SHAPE)
    wrapped = {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}}
    out = filter_state_dict(wrapped, build_model(MICRO))
    assert set(out) == set(sd)
    assert load_pretrained(build_model(MICRO), wrapped, strict=True).complete


def test_pos_embed_resampled_on_a_grid_change():
    sd = official_state_dict(**MICRO_SHAPE)
    model = build_model(MICRO, img_size=48)  # 12x12 patches
    report = load_pretrained(model, sd, strict=True)
    assert report.resampled == ["pos_embed: 8x8 -> 12x12 patches", "decoder_pos_embed: 8x8 -> 12x12 patches"]
    assert model.pos_embed.shape == (1, 145, 64)
    torch.testing.assert_close(model.pos_embed.data, resample_pos_embed(sd["pos_embed"], (12, 12)))
    assert torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])  # cls slot carried over
    assert "resampled pos_embed" in str(report)


def test_clear_errors_for_foreign_files(tmp_path):
    model = build_model(MICRO)
    path = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "notes": "hi"}, path)
    with pytest.raises(CheckpointFormatError, match=r"odd\.pth.*'epoch'"):
        load_pretrained(model, path)
    bad = official_state_dict(**MICRO_SHAPE)
    bad["blocks.0.attn.qkv.weight"] = torch.zeros(10, 64)
    with pytest.raises(CheckpointFormatError, match=r"blocks\.0\.attn\.qkv\.weight.*\(10, 64\)"):
        load_pretrained(model, bad)
    with pytest.raises(CheckpointFormatError, match="no tensors"):
        load_pretrained(model, {"model": {}})


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "obj": _Opaque()}, path)
    with pytest.raises(CheckpointFormatError, match="weights_only"):
        load_pretrained(build_model(MICRO), path)


class _Opaque:
    pass


# -- timm ---------------------------------------------------------------------------------------
def _timm_vit(global_pool):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4,
                             qkv_bias=True, global_pool=global_pool, num_classes=0).eval()


def test_timm_export_token_pool_round_trip():
    torch.manual_seed(0)
    model = build_model(MICRO).eval()
    exported = export_timm_encoder(model, global_pool="token")
    assert not any(k.startswith("decoder_") or "mask_token" in k for k in exported)
    vit = _timm_vit("token")
    vit.load_state_dict(exported, strict=True)
    imgs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit(imgs), model.extract_features(imgs), atol=1e-5, rtol=1e-5)


def test_timm_export_avg_pool_matches_our_classifier():
    torch.manual_seed(0)
    mae = build_model(MICRO)
    exported = export_timm_encoder(mae, global_pool="avg")
    assert "fc_norm.weight" in exported and "norm.weight" not in exported
    torch.testing.assert_close(exported["fc_norm.weight"], mae.norm.weight.detach())
    vit = _timm_vit("avg")
    vit.load_state_dict(exported, strict=True)
    ours = classifier_from_mae(mae.config, num_classes=0, global_pool="avg").eval()
    ours.load_state_dict(exported, strict=True)
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit(imgs), ours(imgs), atol=1e-5, rtol=1e-5)
    # The classifier exports too; its pooling decides which norm timm gets.
    assert set(export_timm_encoder(ours, global_pool="avg")) == set(exported)
    with pytest.raises(ValueError, match="global_pool='avg'"):
        export_timm_encoder(ours, global_pool="token")


def test_mask_token_in_encoder_export_strips_its_token():
    exported = export_timm_encoder(build_model(MICRO, mask_token_in_encoder=True))
    _timm_vit("token").load_state_dict(exported, strict=True)


# -- our own file -------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_save_then_weights_only_load_gives_the_same_model(tmp_path, norm_pix_loss):
    torch.manual_seed(0)
    model = build_model(MICRO, norm_pix_loss=norm_pix_loss, mask_ratio=0.6)
    path = tmp_path / "sub" / "mae.pt"
    save_model(model, path)
    assert os.listdir(path.parent) == ["mae.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT_MAE and raw["model_config"] == model.config.to_dict()
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.pos_embed.requires_grad
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    for a, b in zip(model(imgs, noise=noise), loaded(imgs, noise=noise)):
        assert torch.equal(a, b)


def test_save_and_load_through_an_fsspec_url():
    model = build_model(MICRO)
    url = "memory://maectl-tests/ckpt/mae.pt"
    save_model(model, url)
    loaded = load_model(url)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    fresh = build_model(MICRO)
    assert load_pretrained(fresh, url, strict=True).complete


def test_classifier_checkpoint_round_trip(tmp_path):
    clf = classifier_from_mae(build_model(MICRO).config, num_classes=7, global_pool="token", head_batchnorm=True)
    save_model(clf, tmp_path / "clf.pt")
    loaded = load_model(tmp_path / "clf.pt").eval()
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(clf.eval()(imgs), loaded(imgs))


def test_load_model_refuses_foreign_files(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"model": official_state_dict(**MICRO_SHAPE)}, path)
    with pytest.raises(CheckpointFormatError, match="load_pretrained"):
        load_model(path)
