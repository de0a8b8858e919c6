"""Pictures of what the model does: reconstruction grids and loss curves, drawn with PIL only."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw

from .fileio import open_for_write
from .patches import unpatchify

COLUMNS = ("original", "masked", "reconstruction", "recon + visible")
_MIN_CELL = 96  # small images (32 px) are scaled up, pixel-exact, so that patches are visible
_PAD = 2
_LABEL_HEIGHT = 14
_MASK_GREY = 0.5


def reconstruction_tensors(
    model, imgs: torch.Tensor, noise: torch.Tensor | None = None, mask_ratio: float | None = None
) -> dict[str, torch.Tensor]:
    """imgs (N, C, H, W), normalised as the model saw them -> "original", "reconstruction" and
    "recon + visible", (N, C, H, W) each in that normalised space, and "mask" (N, 1, H, W), 1 = removed.

    With norm_pix_loss the model predicts each patch in its own standard units; the prediction
    is mapped back with that patch's mean and std, which the original image provides. PCA
    coefficients are mapped back through the model's basis.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    finally:
        model.train(was_training)
    imgs = imgs.detach().float()
    p, c = model.config.patch_size, imgs.shape[1]
    grid = (imgs.shape[-2] // p, imgs.shape[-1] // p)
    pred = model.pred_to_patches(pred, imgs)  # norm-pixel and PCA targets back to pixels
    recon = unpatchify(pred, p, grid, c)
    removed = unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, p * p), p, grid, 1)  # (N, 1, H, W)
    return {
        "original": imgs,
        "reconstruction": recon,
        "recon + visible": imgs * (1 - removed) + recon * removed,
        "mask": removed,
    }


def _to_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(C, H, W) normalised -> (H, W, C) uint8 display pixels."""
    return ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def reconstruction_grid(
    model,
    imgs: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    path: str | os.PathLike | None = None,
    noise: torch.Tensor | None = None,
    mask_ratio: float | None = None,
) -> Image.Image:
    """One row per image: original / masked / reconstruction / reconstruction with the visible
    patches pasted back. `mean`/`std` are the per-channel input normalisation (e.g. ImageNet's).
    Saves a PNG to a local path or fsspec URL when `path` is given."""
    cols = reconstruction_tensors(model, imgs, noise=noise, mask_ratio=mask_ratio)
    channels = imgs.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(channels, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(channels, 1, 1)
    n, _, h, w = imgs.shape
    scale = max(1, math.ceil(_MIN_CELL / min(h, w)))
    cell_h, cell_w = h * scale, w * scale
    canvas = Image.new(
        "RGB",
        (len(COLUMNS) * (cell_w + _PAD) + _PAD, _LABEL_HEIGHT + n * (cell_h + _PAD) + _PAD),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(COLUMNS):
        draw.text((_PAD + j * (cell_w + _PAD) + 2, 1), label, fill="black")
    grey = torch.full((channels, 1, 1), _MASK_GREY)
    for i in range(n):
        original = _to_uint8(cols["original"][i], mean_t, std_t)
        removed = cols["mask"][i].permute(1, 2, 0).bool()  # (H, W, 1)
        grey_px = (grey * 255).round().to(torch.uint8).permute(1, 2, 0)
        pictures = {
            "original": original,
            "masked": torch.where(removed, grey_px, original),
            "reconstruction": _to_uint8(cols["reconstruction"][i], mean_t, std_t),
            "recon + visible": _to_uint8(cols["recon + visible"][i], mean_t, std_t),
        }
        for j, name in enumerate(COLUMNS):
            array = pictures[name].numpy()
            tile = Image.fromarray(array[..., 0] if channels == 1 else array[..., :3])
            tile = tile.resize((cell_w, cell_h), Image.NEAREST).convert("RGB")
            canvas.paste(tile, (_PAD + j * (cell_w + _PAD), _LABEL_HEIGHT + _PAD + i * (cell_h + _PAD)))
    if path is not None:
        _save_png(canvas, path)
    return canvas


def loss_curve_png(
    steps: Sequence[float],
    losses: Sequence[float],
    path: str | os.PathLike | None = None,
    *,
    size: tuple[int, int] = (640, 360),
    title: str = "training loss",
) -> Image.Image:
    """A line plot of loss against step (non-finite points skipped); PNG at `path` if given."""
    points = [(float(s), float(v)) for s, v in zip(steps, losses, strict=True) if math.isfinite(float(v))]
    width, height = size
    left, right, top, bottom = 64, 16, 24, 32
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 6), title, fill="black")
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    if points:
        xs, ys = zip(*points)
        x_lo, x_hi = min(xs), max(xs)
        y_lo, y_hi = min(ys), max(ys)
        x_span, y_span = (x_hi - x_lo) or 1.0, (y_hi - y_lo) or 1.0

        def to_pixel(x: float, y: float) -> tuple[float, float]:
            px = left + (x - x_lo) / x_span * (width - left - right)
            py = height - bottom - (y - y_lo) / y_span * (height - top - bottom)
            return px, py

        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=(31, 119, 180), width=2)
        else:
            x, y = pixels[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(31, 119, 180))
        for value, y in ((y_hi, top), (y_lo, height - bottom)):
            draw.text((4, y - 6), f"{value:.4g}", fill="black")
        draw.text((left, height - bottom + 4), f"{x_lo:g}", fill="black")
        label = f"{x_hi:g}"
        draw.text((width - right - 6 * len(label), height - bottom + 4), label, fill="black")
    if path is not None:
        _save_png(image, path)
    return image


def _save_png(image: Image.Image, path: str | os.PathLike) -> None:
    with open_for_write(path) as f:
        image.save(f, format="PNG")
