"""Compute estimates: MAE's encoder on visible patches only is ~4x cheaper than on all tokens."""

from __future__ import annotations

import pytest

from mae_core.models.registry import model_config
from orchestrator.estimate import block_flops, estimate_run, pretrain_flops
from orchestrator.experiments import resolve


def test_block_flops_counts_matmuls():
    # 197 tokens, 768 wide, MLP 4x: 2 * (12 * T * D^2 + 2 * T^2 * D)
    assert block_flops(197, 768, 4.0) == 2 * (12 * 197 * 768**2 + 2 * 197**2 * 768)


def test_vit_l_encoder_on_visible_patches_is_about_4x_cheaper():
    c = model_config("mae_vit_large_patch16")
    visible = pretrain_flops(c)
    everything = pretrain_flops(c, mask_token_in_encoder=True)
    assert visible.encoder_tokens == 50 and everything.encoder_tokens == 197
    # Linear layers scale with tokens (197 / 50 = 3.9x), attention a little faster.
    assert 3.0 <= everything.encoder / visible.encoder <= 4.2
    # Whole model (+ the 8 x 512 decoder): the paper's Table 1c says 3.3x.
    assert 3.0 <= everything.forward / visible.forward <= 3.6
    assert 35e9 < visible.forward < 50e9


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("MAECTL_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("MAECTL_HOME", str(tmp_path / "home"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "MAECTL_JOBS_PATH"):
        monkeypatch.delenv(name, raising=False)


def test_gpu_hours_scale_with_epochs_and_throughput():
    short, long = resolve("pretrain-vit-l-800ep"), resolve("pretrain-vit-l-1600ep")
    e800 = estimate_run(short.run, short.spec.resources, train_images=None)
    e1600 = estimate_run(long.run, long.spec.resources, train_images=None)
    assert e1600.gpu_hours == pytest.approx(2 * e800.gpu_hours)
    assert estimate_run(short.run, short.spec.resources, train_images=None, tflops_per_gpu=50).gpu_hours == pytest.approx(2 * e800.gpu_hours)
    # 800 epochs of ImageNet: ~1.0e8 images x ~125 GFLOP: a few hundred GPU-hours at 100 TFLOP/s.
    assert 100 < e800.gpu_hours < 1000 and e800.wall_hours == pytest.approx(e800.gpu_hours / 64)
    linprobe = resolve("linprobe-vit-l")
    probe = estimate_run(linprobe.run, linprobe.spec.resources, train_images=None)
    assert probe.train_flops_per_image == probe.flops.forward  # frozen encoder


def test_show_prints_config_and_estimate(capsys):
    from orchestrator.cli import main

    assert main(["show", "pretrain-vit-h-1600ep", "train.epochs=10"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 10" in out and "mae_vit_huge_patch14" in out and "accum_iter: 2" in out
    assert "GPU-hours" in out and "TFLOP/s" in out and "visible patches" in out
