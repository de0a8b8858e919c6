"""The MAE model against REFERENCE.md: registry, shapes, numerics, variants.

`reference_mae_loss` (tests/official_reference.py) is an independent, functional re-derivation of
the documented pipeline (written from the reference text, not from our modules); the model must
agree with it, and its plain path (fused_attn=False) bit for bit.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from mae_core import MAEConfig, MaskedAutoencoderViT, build_model, list_models, model_config
from mae_core.patches import normalize_patches, patch_stats, patchify, unpatchify
from mae_core.pos_embed import sincos_2d
from tests.official_reference import reference_mae_loss

MICRO = "mae_vit_micro_patch4_32"


def small(name: str, **overrides) -> MaskedAutoencoderViT:
    """A registered model at 2x2 patches and at most 2 + 1 blocks, widths and heads unchanged."""
    c = model_config(name)
    args = dict(img_size=2 * c.patch_size, depth=min(c.depth, 2), decoder_depth=min(c.decoder_depth, 1))
    args.update(overrides)
    return build_model(name, **args)


# -- registry ---------------------------------------------------------------------------------
def test_registry_has_the_paper_sizes():
    names = set(list_models())
    assert {"mae_vit_tiny_patch16", "mae_vit_small_patch16", "mae_vit_base_patch16",
            "mae_vit_large_patch16", "mae_vit_huge_patch14"} <= names
    for name, (dim, depth, heads, patch) in {
        "mae_vit_base_patch16": (768, 12, 12, 16),
        "mae_vit_large_patch16": (1024, 24, 16, 16),
        "mae_vit_huge_patch14": (1280, 32, 16, 14),
    }.items():
        c = model_config(name)
        assert (c.embed_dim, c.depth, c.num_heads, c.patch_size) == (dim, depth, heads, patch)
        assert (c.decoder_embed_dim, c.decoder_depth, c.decoder_num_heads) == (512, 8, 16)


def test_unknown_names_suggest():
    from mae_core.structured import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'mae_vit_base_patch16'"):
        build_model("mae_vit_bas_patch16")
    with pytest.raises(ConfigError, match="norm_pix_loss") as err:
        build_model(MICRO, norm_pix_los=True)
    assert err.value.key == "norm_pix_los"


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_registered_model(name):
    torch.manual_seed(0)
    model = small(name)
    c = model.config
    imgs = torch.randn(2, 3, c.img_size, c.img_size)
    loss, pred, mask = model(imgs)
    assert torch.isfinite(loss)
    assert pred.shape == (2, 4, c.patch_size**2 * 3) and mask.shape == (2, 4)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.pos_embed.grad is None  # fixed sin-cos, not trained


@pytest.mark.parametrize("name", ["mae_vit_base_patch16", "mae_vit_large_patch16", "mae_vit_huge_patch14"])
def test_full_size_encoder_equals_timm_vit(name):
    """At full size, on the meta device: our encoder has exactly timm's ViT parameters."""
    from timm.models.vision_transformer import VisionTransformer

    c = model_config(name)
    with torch.device("meta"):
        ours = MaskedAutoencoderViT(c)
        theirs = VisionTransformer(img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim,
                                   depth=c.depth, num_heads=c.num_heads, qkv_bias=True, num_classes=0)
    encoder = {k: v.shape for k, v in ours.state_dict().items()
               if not k.startswith("decoder_") and k != "mask_token"}
    assert encoder == {k: v.shape for k, v in theirs.state_dict().items()}
    tokens = (c.img_size // c.patch_size) ** 2 + 1
    assert ours.pos_embed.shape == (1, tokens, c.embed_dim)
    assert ours.decoder_pos_embed.shape == (1, tokens, 512)
    assert ours.decoder_pred.weight.shape == (c.patch_size**2 * 3, 512)


def test_layer_norm_eps_gelu_and_init():
    model = build_model(MICRO)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in norms)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        fan_out, fan_in = m.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))  # xavier-uniform
        assert m.weight.abs().max() <= bound and (m.bias == 0).all()
    assert 0.01 < float(model.cls_token.detach().std()) < 0.03
    w = model.patch_embed.proj.weight
    assert w.abs().max() <= math.sqrt(6 / (w.shape[0] + w[0].numel()))


# -- numerics -----------------------------------------------------------------------------------
def _numpy_sincos(dim, grid_h, grid_w):
    """REFERENCE.md's layout: first half of the dims the column (x), second half the row; each
    half [sin | cos] with omega_i = 1 / 10000^(i / (dim/4)); cls slot all zeros."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        angles = np.outer(pos.astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.divmod(np.arange(grid_h * grid_w), grid_w)  # row-major patches
    emb = np.concatenate([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)[None].astype(np.float32)


@pytest.mark.parametrize("dim,grid", [(64, (8, 8)), (768, (14, 14)), (32, (3, 5))])
def test_sincos_matches_independent_numpy(dim, grid):
    ours = sincos_2d(dim, *grid, cls_token=True).numpy()
    np.testing.assert_allclose(ours, _numpy_sincos(dim, *grid), atol=1e-6, rtol=0)


def test_model_pos_embeds_are_the_sincos():
    model = build_model(MICRO)
    np.testing.assert_allclose(model.pos_embed.detach().numpy(), _numpy_sincos(64, 8, 8), atol=1e-6)
    np.testing.assert_allclose(model.decoder_pos_embed.detach().numpy(), _numpy_sincos(64, 8, 8), atol=1e-6)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def test_patchify_order_and_round_trip():
    imgs = torch.randn(2, 3, 12, 8)
    p = 4
    patches = patchify(imgs, p)
    assert patches.shape == (2, 6, p * p * 3)
    # Patch (row 1, col 0) is index 1 * (8 // 4) + 0; its vector is ordered (row, col, channel).
    n, i, j, r, c, ch = 1, 1, 0, 2, 3, 1
    assert patches[n, i * 2 + j, (r * p + c) * 3 + ch] == imgs[n, ch, i * p + r, j * p + c]
    assert torch.equal(unpatchify(patches, p, (3, 2), 3), imgs)


def test_norm_pix_target_statistics():
    target = torch.rand(3, 10, 48) * 5 + 2
    normed = normalize_patches(target)
    assert normed.mean(dim=-1).abs().max() < 1e-5
    var = target.var(dim=-1, unbiased=True)
    expected_std = (var / (var + 1e-6)).sqrt()  # unbiased variance + 1e-6 under the root
    torch.testing.assert_close(normed.std(dim=-1, unbiased=True), expected_std, atol=1e-5, rtol=0)
    mean, std = patch_stats(target)
    torch.testing.assert_close(std.squeeze(-1) ** 2, var + 1e-6)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("fused_attn", [True, False])
def test_matches_the_documented_pipeline(norm_pix_loss, fused_attn):
    torch.manual_seed(0)
    model = build_model(MICRO, norm_pix_loss=norm_pix_loss, fused_attn=fused_attn).eval()
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    loss, pred, mask = model(imgs, mask_ratio=0.75, noise=noise)
    ref_loss, ref_pred, ref_mask = reference_mae_loss(model.state_dict(), model.config, imgs, noise, 0.75)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(pred, ref_pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)


def test_sdpa_path_equals_reference_path():
    torch.manual_seed(0)
    fused = build_model(MICRO)
    plain = build_model(MICRO, fused_attn=False)
    plain.load_state_dict(fused.state_dict())
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    out_f, out_p = fused(imgs, noise=noise), plain(imgs, noise=noise)
    torch.testing.assert_close(out_f[1], out_p[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_f[0], out_p[0], atol=1e-5, rtol=1e-5)
    out_f[0].backward()
    out_p[0].backward()
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_loss_only_on_masked_patches_unless_asked():
    torch.manual_seed(0)
    model = build_model(MICRO)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    _, pred, mask = model(imgs, noise=noise)
    per_patch = ((pred - patchify(imgs, 4)) ** 2).mean(-1)
    torch.testing.assert_close(model.forward_loss(imgs, pred, mask), per_patch[mask.bool()].mean())
    visible = build_model(MICRO, loss_on_visible=True)
    visible.load_state_dict(model.state_dict())
    torch.testing.assert_close(visible(imgs, noise=noise)[0], per_patch.mean())


def test_same_noise_same_mask_different_noise_different_mask():
    model = build_model(MICRO)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    a, b = model(imgs, noise=noise), model(imgs, noise=noise.clone())
    assert torch.equal(a[2], b[2]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[2], model(imgs, noise=torch.rand(2, 64))[2])


def test_mask_token_in_encoder_variant():
    torch.manual_seed(0)
    fast = build_model(MICRO)
    slow = build_model(MICRO, mask_token_in_encoder=True)
    assert not hasattr(slow, "mask_token")  # its decoder never inserts one
    shared = {k: v for k, v in fast.state_dict().items() if k != "mask_token"}
    missing, unexpected = slow.load_state_dict(shared, strict=False)
    assert missing == ["encoder_mask_token"] and unexpected == []
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    latent, masked = slow.forward_encoder(imgs, 0.75, noise)
    assert latent.shape == (2, 65, 64)  # every position goes through the encoder
    loss, pred, mask = slow(imgs, noise=noise)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(mask, fast(imgs, noise=noise)[2])
    assert all(p.grad is not None for p in slow.parameters() if p.requires_grad)
    # With nothing masked both variants see the same tokens and predict the same pixels.
    none_masked = torch.rand(2, 64)
    pred_slow = slow(imgs, mask_ratio=0.0, noise=none_masked)[1]
    slow_as_fast = build_model(MICRO)
    slow_as_fast.load_state_dict({**slow.state_dict(), "mask_token": fast.mask_token}, strict=False)
    torch.testing.assert_close(pred_slow, slow_as_fast(imgs, mask_ratio=0.0, noise=none_masked)[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (48, 32), (32, 32), (40, 24)])
def test_any_input_size_divisible_by_the_patch(size):
    model = build_model(MICRO)
    imgs = torch.randn(2, 3, *size)
    loss, pred, mask = model(imgs)
    length = (size[0] // 4) * (size[1] // 4)
    assert torch.isfinite(loss) and pred.shape == (2, length, 48) and mask.shape == (2, length)
    assert model.extract_features(imgs).shape == (2, 64)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize("strategy", ["random", "block", "grid"])
def test_mask_strategies_train(strategy):
    model = build_model(MICRO, mask_strategy=strategy)
    loss, _, mask = model(torch.randn(2, 3, 32, 32))
    loss.backward()
    assert torch.isfinite(loss) and (mask.sum(1) == 48).all()


def test_extract_features_is_the_unmasked_encoder():
    model = build_model(MICRO).eval()
    imgs = torch.randn(2, 3, 32, 32)
    latent, masked = model.forward_encoder(imgs, 0.0, torch.arange(64.0).expand(2, -1))
    assert masked.mask.sum() == 0
    torch.testing.assert_close(model.extract_features(imgs), latent[:, 0])
    torch.testing.assert_close(model.extract_features(imgs, pool="avg"), latent[:, 1:].mean(1))
    with pytest.raises(ValueError):
        model.extract_features(imgs, pool="max")


def test_bf16_autocast_runs_and_keeps_a_float32_loss():
    model = build_model(MICRO, norm_pix_loss=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, _ = model(torch.randn(2, 3, 32, 32))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_config_is_plain_data():
    c = model_config(MICRO, norm_pix_loss=True)
    d = c.to_dict()
    assert MAEConfig(**d) == c
    assert all(isinstance(v, (int, float, str, bool)) for v in d.values())
    with pytest.raises(ValueError):
        dataclasses.replace(c, mask_strategy="checkerboard")


def test_bench_flops_ratio_of_the_visible_only_encoder():
    """The paper's Table 1: the mask-token encoder costs ~3.3x the FLOPs at 75% masking."""
    from bench.model import mae_forward_flops

    large = model_config("mae_vit_large_patch16")
    ratio = mae_forward_flops(dataclasses.replace(large, mask_token_in_encoder=True), 0.75) / mae_forward_flops(large, 0.75)
    assert 3.1 < ratio < 3.4


# -- fast paths, bit for bit -------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_plain_path_equals_the_documented_pipeline_bit_for_bit(norm_pix_loss):
    """fused_attn=False keeps the release's op order: the same floats, not just close ones."""
    torch.manual_seed(0)
    model = build_model(MICRO, norm_pix_loss=norm_pix_loss, fused_attn=False)
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    loss, pred, mask = model(imgs, noise=noise)
    ref_loss, ref_pred, ref_mask = reference_mae_loss(model.state_dict(), model.config, imgs, noise, 0.75)
    assert torch.equal(pred, ref_pred) and torch.equal(loss, ref_loss) and torch.equal(mask, ref_mask)


@pytest.mark.parametrize("fused_attn", [True, False])
def test_predicting_only_the_masked_patches_changes_nothing(fused_attn):
    torch.manual_seed(0)
    model = build_model(MICRO, norm_pix_loss=True, fused_attn=fused_attn)
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 64)
    loss, pred, mask = model(imgs, noise=noise)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    fast_loss, fast_pred, fast_mask = model(imgs, noise=noise, full_pred=False)
    fast_loss.backward()
    assert torch.equal(fast_loss, loss) and torch.equal(fast_mask, mask)
    assert fast_pred.shape == (3, 48, 48)  # only the 48 removed patches of each image
    ids_removed = torch.argsort(noise, dim=1)[:, 16:]
    assert torch.equal(fast_pred, torch.gather(pred, 1, ids_removed[..., None].expand(-1, -1, 48)))
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, grads[name], atol=1e-6, rtol=1e-5, msg=name)
    # With the loss on every patch, every patch is predicted either way.
    visible = build_model(MICRO, loss_on_visible=True)
    assert visible(imgs, noise=noise, full_pred=False)[1].shape == (3, 64, 48)


# -- reconstruction targets (Table 1d) ---------------------------------------------------------
def test_target_knob_validation():
    from mae_core.structured import ConfigError

    assert model_config(MICRO, norm_pix_loss=True).reconstruction_target == "norm_pixel"
    assert model_config(MICRO, target="norm_pixel").reconstruction_target == "norm_pixel"
    assert model_config(MICRO).reconstruction_target == "pixel"
    with pytest.raises(ConfigError, match="DALL-E") as err:
        model_config(MICRO, target="dvae")
    assert err.value.key == "target"
    with pytest.raises(ConfigError, match="did you mean 'pca'") as err:
        model_config(MICRO, target="pcaa")
    assert err.value.key == "target"
    with pytest.raises(ConfigError, match="conflicts") as err:
        model_config(MICRO, target="pca", norm_pix_loss=True, pca_components=16)
    assert err.value.key == "norm_pix_loss"
    with pytest.raises(ConfigError, match="4x4x3 = 48") as err:
        model_config(MICRO, target="pca")  # 96 components of a 48-dim patch
    assert err.value.key == "pca_components"


def test_pca_from_moments_recovers_a_known_basis():
    from mae_core.targets import patch_moments, pca_coefficients, pca_from_moments, pca_reconstruct

    gen = torch.Generator().manual_seed(0)
    directions, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    scales = torch.tensor([5.0, 3.0, 2.0] + [0.1] * 9, dtype=torch.float64)
    samples = (torch.randn(20000, 12, generator=gen, dtype=torch.float64) * scales) @ directions.T + 7.0
    # Moments add up over batches: two halves give the same basis as the whole.
    halves = [patch_moments(part.reshape(10, 1000, 12)) for part in samples.chunk(2)]
    summed = tuple(a + b for a, b in zip(*halves))
    whole = patch_moments(samples)
    for a, b in zip(summed, whole):
        torch.testing.assert_close(a, b)
    mean, basis, variance = pca_from_moments(*summed, components=3)
    assert mean.shape == (12,) and basis.shape == (3, 12) and variance.shape == (3,)
    torch.testing.assert_close(mean, torch.full((12,), 7.0), atol=0.1, rtol=0)
    torch.testing.assert_close(basis @ basis.T, torch.eye(3), atol=1e-5, rtol=0)  # orthonormal rows
    cosines = (basis.double() @ directions[:, :3]).abs().diagonal()
    assert (cosines > 0.999).all()  # the top directions, largest first
    torch.testing.assert_close(variance, (scales[:3] ** 2).float(), rtol=0.05, atol=0)
    # Coefficients and back: the projection onto the kept components.
    x = samples[:5].float().reshape(1, 5, 12)
    coeffs = pca_coefficients(x, mean, basis)
    back = pca_reconstruct(coeffs, mean, basis)
    assert coeffs.shape == (1, 5, 3)
    assert (back - x).norm() < 0.1 * (x - mean).norm()
    with pytest.raises(ValueError, match="components"):
        pca_from_moments(*summed, components=13)


def _pca_model(**overrides):
    from mae_core.targets import patch_moments, pca_from_moments

    torch.manual_seed(0)
    model = build_model(MICRO, target="pca", pca_components=16, **overrides)
    data = torch.randn(64, 3, 32, 32)
    model.set_pca_basis(*pca_from_moments(*patch_moments(patchify(data, 4)), 16)[:2])
    return model, data


def test_pca_target_loss_is_on_the_coefficients(tmp_path):
    from mae_core.targets import pca_coefficients
    from mae_core.weights import load_model, save_model

    model, data = _pca_model()
    assert model.decoder_pred.weight.shape == (16, 64)  # the head predicts 16 coefficients
    imgs, noise = data[:2], torch.rand(2, 64)
    loss, pred, mask = model(imgs, noise=noise)
    assert pred.shape == (2, 64, 16)
    coeffs = pca_coefficients(patchify(imgs, 4), model.decoder_pca_mean, model.decoder_pca_basis)
    expected = ((pred - coeffs) ** 2).mean(-1)[mask.bool()].mean()
    torch.testing.assert_close(loss, expected)
    assert torch.equal(model(imgs, noise=noise, full_pred=False)[0], loss)
    loss.backward()
    assert model.decoder_pca_basis.grad is None  # fixed, not trained
    # The basis is part of the state dict, so a checkpoint carries it; encoder exports drop it.
    save_model(model, tmp_path / "mae.pt")
    again = load_model(tmp_path / "mae.pt")
    assert torch.equal(again.decoder_pca_basis, model.decoder_pca_basis)
    assert torch.equal(again(imgs, noise=noise)[0], loss)
    from mae_core.weights import export_timm_encoder

    assert not any("pca" in k for k in export_timm_encoder(model))
    # Pictures: coefficients back to pixels, the projection of each patch onto the basis.
    perfect = model.pred_to_patches(coeffs, imgs)
    assert perfect.shape == (2, 64, 48)
    assert (perfect - patchify(imgs, 4)).norm() < (patchify(imgs, 4) - model.decoder_pca_mean).norm()


def test_pca_target_refuses_to_train_without_a_basis():
    model = build_model(MICRO, target="pca", pca_components=16)
    with pytest.raises(RuntimeError, match="not estimated"):
        model(torch.randn(2, 3, 32, 32))


@pytest.mark.slow
def test_pretraining_with_the_pca_target_estimates_the_basis_first(demo_shards, tmp_path):
    """The engine fits the basis from the first training batches before step 0; the final
    model file carries it, and reconstruction pictures go through it."""
    from mae_core.engine import load_run_config, train
    from mae_core.weights import load_model

    cfg = load_run_config({
        "task": "pretrain", "output_dir": str(tmp_path),
        "model": {"name": MICRO, "target": "pca", "pca_components": 24},
        "data": {"url": demo_shards, "img_size": 32, "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "optim": {"lr": 2e-3, "warmup_epochs": 0},
        "train": {"epochs": 1, "max_steps": 4, "seed": 0},
        "monitor": {"knn_every_epochs": None, "recon_every_epochs": None},
    })
    summary = train(cfg)
    assert summary.final_step == 4
    model = load_model(tmp_path / "final" / "mae.pt")
    basis = model.decoder_pca_basis
    assert basis.shape == (24, 48)
    torch.testing.assert_close(basis @ basis.T, torch.eye(24), atol=1e-4, rtol=0)
    from mae_core.visualize import reconstruction_tensors

    cols = reconstruction_tensors(model, torch.randn(2, 3, 32, 32))
    assert cols["reconstruction"].shape == (2, 3, 32, 32) and torch.isfinite(cols["reconstruction"]).all()
