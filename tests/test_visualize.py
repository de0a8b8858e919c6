"""Reconstruction grids and loss curves."""

import io

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from mae_core import build_model
from mae_core.patches import normalize_patches, patchify
from mae_core.visualize import loss_curve_png, reconstruction_grid, reconstruction_tensors

MICRO = "mae_vit_micro_patch4_32"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _perfect(model):
    """Make the model predict its own target exactly: then every reconstruction is the image."""
    original = model.forward

    def forward(imgs, mask_ratio=None, noise=None):
        loss, _, mask = original(imgs, mask_ratio=mask_ratio, noise=noise)
        return loss, model.reconstruction_target(imgs), mask

    model.forward = forward
    return model


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_norm_pix_predictions_are_unnormalised_per_patch(norm_pix_loss):
    model = _perfect(build_model(MICRO, norm_pix_loss=norm_pix_loss))
    imgs = torch.randn(2, 3, 32, 32)
    cols = reconstruction_tensors(model, imgs, noise=torch.rand(2, 64))
    torch.testing.assert_close(cols["reconstruction"], imgs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cols["recon + visible"], imgs, atol=1e-4, rtol=1e-4)
    if norm_pix_loss:  # the raw prediction alone is nothing like the picture
        assert (normalize_patches(patchify(imgs, 4)) - patchify(imgs, 4)).abs().max() > 0.5


def test_grid_layout_and_pasted_visible_patches(tmp_path):
    torch.manual_seed(0)
    model = build_model(MICRO, norm_pix_loss=True)
    model.train()
    imgs = torch.randn(3, 3, 32, 32).clamp(-2, 2)
    noise = torch.rand(3, 64)
    image = reconstruction_grid(model, imgs, mean=MEAN, std=STD, path=tmp_path / "grid.png", noise=noise)
    assert model.training  # mode restored
    assert Image.open(tmp_path / "grid.png").size == image.size
    cell, pad, label = 96, 2, 14  # 32 px images are scaled 3x
    assert image.size == (4 * (cell + pad) + pad, label + 3 * (cell + pad) + pad)
    pixels = np.asarray(image)
    cols = reconstruction_tensors(model, imgs, noise=noise)
    for row in range(3):
        top = label + pad + row * (cell + pad)
        tiles = [pixels[top : top + cell : 3, pad + j * (cell + pad) : pad + j * (cell + pad) + cell : 3] for j in range(4)]
        visible = (cols["mask"][row, 0] == 0).numpy()
        # Visible patches: masked and pasted columns show the original pixels; removed ones are grey.
        assert (tiles[1][visible] == tiles[0][visible]).all()
        assert (tiles[3][visible] == tiles[0][visible]).all()
        assert (tiles[1][~visible] == 128).all()
        expected_original = ((imgs[row] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None])
                             .clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        assert np.abs(tiles[0].astype(int) - expected_original).max() <= 1


def test_grid_to_an_fsspec_url():
    reconstruction_grid(build_model(MICRO), torch.randn(1, 3, 32, 32), mean=MEAN, std=STD,
                        path="memory://maectl-tests/vis/grid.png")
    with fsspec.open("memory://maectl-tests/vis/grid.png", "rb") as f:
        assert Image.open(io.BytesIO(f.read())).format == "PNG"


def test_loss_curve(tmp_path):
    image = loss_curve_png([0, 1, 2, 3], [1.0, float("nan"), 0.5, 0.25], tmp_path / "loss.png")
    assert image.size == (640, 360) and (tmp_path / "loss.png").exists()
    assert loss_curve_png([5], [0.3]).size == (640, 360)
