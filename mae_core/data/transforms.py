"""Per-mode augmentation, split in two halves:

- `SampleTransform`: encoded image bytes -> uint8 (3, S, S) (channels-last strides). Chooses the view (crop box + flip)
  from the image header, then decodes only what that view needs (see decode.py). Fine-tuning adds
  timm's RandAugment here (augment.py); pretraining optionally colour jitter.
- `BatchTransform`: the stacked uint8 batch -> normalised float32, once per batch rather than per
  image; fine-tuning adds timm's per-image random erasing after normalising (as the recipe does).

Randomness comes from torch's global generator, which the loader seeds per batch inside
`torch.random.fork_rng`, so results depend only on (seed, epoch, rank, stream, batch index).

Modes: pretrain = RandomResizedCrop(crop_scale, bicubic) + flip (no colour jitter by default: it
hurts MAE), or the fixed-size crop of Table 1e (`pretrain_crop`); finetune = RandomResizedCrop(
supervised_crop_scale) + flip + timm's RandAugment + timm's random erasing (mixup/cutmix act on
batches and belong to the engine); linprobe = the release's single-draw RandomResizedCrop(
supervised_crop_scale) + flip; eval = resize the short side to S / eval crop ratio + centre crop.
"""

from __future__ import annotations

import math

import torch

from .config import DataConfig
from .decode import View, decode_view, open_image

MODES = ("pretrain", "finetune", "linprobe", "eval")
TRAINING_MODES = ("pretrain", "finetune", "linprobe")


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown data mode {mode!r}; expected one of {', '.join(MODES)}")


class RandomResizedView:
    """RandomResizedCrop's box (torchvision's algorithm and distribution) and a flip, drawn from the
    header-only image's size.

    The algorithm is torchvision's `RandomResizedCrop.make_params`: up to ten tries of an area
    fraction uniform in `scale` and an aspect ratio log-uniform in `ratio`, keeping the first box
    that fits, placed uniformly; else the whole image clamped to the ratio range, centred. The
    uniforms come from one draw of torch's (per-batch seeded) generator instead of ~40 tiny torch
    ops: the same distribution for a tenth of the cost (~3 us instead of ~30 us an image)."""

    ATTEMPTS = 10

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool):
        self._scale = (float(scale[0]), float(scale[1]))
        self._ratio = (float(ratio[0]), float(ratio[1]))
        self._log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self._hflip = hflip

    def __call__(self, image) -> View:
        width, height = image.size
        # 4 uniforms a try (area, ratio, top, left), then the flip; float64, so the integer
        # positions derived from them are uniform to well below one part in 10^9.
        u = torch.rand(4 * self.ATTEMPTS + 1, dtype=torch.float64).tolist()
        flip = self._hflip and u[-1] < 0.5
        area = width * height
        (s0, s1), (r0, r1) = self._scale, self._log_ratio
        for k in range(0, 4 * self.ATTEMPTS, 4):
            target_area = area * (s0 + (s1 - s0) * u[k])
            aspect = math.exp(r0 + (r1 - r0) * u[k + 1])
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(u[k + 2] * (height - h + 1)), height - h)
                left = min(int(u[k + 3] * (width - w + 1)), width - w)
                return View(top, left, h, w, flip)
        in_ratio = width / height  # fallback: the whole image, clamped to the ratio range, centred
        if in_ratio < min(self._ratio):
            w, h = width, int(round(width / min(self._ratio)))
        elif in_ratio > max(self._ratio):
            w, h = int(round(height * max(self._ratio))), height
        else:
            w, h = width, height
        return View((height - h) // 2, (width - w) // 2, h, w, flip)


class CentreView:
    """Resize(S / crop_ratio) + CenterCrop(S), expressed as one box in original pixels."""

    def __init__(self, size: int, crop_ratio: float):
        self._size = size
        self._resized_short = int(size / crop_ratio)

    def __call__(self, image) -> View:
        width, height = image.size
        side = max(1, round(self._size * min(width, height) / self._resized_short))
        side_h, side_w = min(side, height), min(side, width)
        return View(round((height - side_h) / 2), round((width - side_w) / 2), side_h, side_w)


class SampleTransform:
    """Encoded image bytes -> uint8 tensor (3, img_size, img_size) for one mode."""

    def __init__(self, cfg: DataConfig, mode: str):
        from . import augment

        check_mode(mode)
        self.size = cfg.img_size
        self.draft = cfg.draft
        # Training decodes with libjpeg-turbo's fast IDCT and upsampling; eval as PIL does (decode.py).
        self.fast_decode = mode != "eval"
        if mode == "eval":
            self.view = CentreView(cfg.img_size, augment.eval_crop_ratio(cfg))
        elif mode == "linprobe":
            self.view = augment.SingleDrawView(cfg.img_size, cfg.supervised_crop_scale, cfg.crop_ratio, cfg.hflip)
        elif mode == "pretrain" and cfg.pretrain_crop == "fixed_size":
            self.view = augment.FixedSizeView(cfg.img_size, cfg.fixed_crop_ratio, cfg.hflip)
        else:
            scale = cfg.crop_scale if mode == "pretrain" else cfg.supervised_crop_scale
            self.view = RandomResizedView(cfg.img_size, scale, cfg.crop_ratio, cfg.hflip)
        self.augment = None
        if mode == "finetune" and cfg.randaug_num_ops > 0:
            self.augment = augment.FinetuneAugment(cfg)
        elif mode == "pretrain":
            self.augment = augment.color_jitter(cfg)

    def __call__(self, data: bytes) -> torch.Tensor:
        image = open_image(data)
        out = decode_view(image, self.view(image), self.size, draft=self.draft, fast=self.fast_decode)
        if self.augment is not None:
            out = self.augment(out)
        return out


class BatchTransform:
    """uint8 (B, 3, S, S) -> normalised float32, plus per-image random erasing when fine-tuning."""

    def __init__(self, cfg: DataConfig, mode: str):
        check_mode(mode)
        # Normalising in place on the 0-255 scale: one conversion and two passes over the batch,
        # a third of the time of to_dtype(scale=True) + normalize (memory-bound on big batches).
        self.offset = torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255
        self.scale = 1 / (torch.tensor(cfg.std).view(1, 3, 1, 1) * 255)
        self.erase = None
        if mode == "finetune" and cfg.random_erasing > 0:
            from .augment import BatchErasing

            self.erase = BatchErasing(cfg)  # timm's RandomErasing: one draw per image of the batch

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = images.to(torch.float32, memory_format=torch.contiguous_format).sub_(self.offset).mul_(self.scale)
        if self.erase is not None:
            out = self.erase(out)
        return out
