"""Augmentations beyond the pretraining RandomResizedCrop: the supervised recipes and Table 1e's rows.

- Fine-tuning is timm's own augmentation, built by `timm.data.create_transform` exactly as the
  MAE release calls it (`auto_augment="rand-m9-mstd0.5-inc1"`, bicubic, random erasing 0.25 in
  'pixel' mode, no colour jitter); `FinetuneAugment` keeps the crop on our fast decode path (the
  same RandomResizedCrop algorithm as timm's, drawn from the header, decoding only the crop) and
  hands the resized crop to timm's RandAugment (`secondary`), and the normalised batch to timm's
  RandomErasing (`final`'s last op). Mixup/CutMix are timm's `Mixup`, in the engine (batches).
- Linear probing: the release's single-draw RandomResizedCrop (`SingleDrawView`): one area and
  one aspect ratio, the box clamped to the image, no ten-try loop and no centre fallback.
- Pretraining, Table 1e: `FixedSizeView` (resize the short side, then a random crop of fixed
  size, the paper's "fixed size" row) and colour jitter (`color_jitter`, torchvision's
  `ColorJitter(b, c, s)`, the "+ color jit" row).

timm draws from Python's `random` and NumPy's global generator, not torch's. The loader seeds
torch's generator per batch (loader.py), so `torch_seeded_python_rngs` seeds both from it for the
duration of one call and restores them afterwards: timm's draws then depend only on (seed, epoch,
rank, stream, batch), as ours do, and nothing else that uses those generators is disturbed.
"""

from __future__ import annotations

import contextlib
import math
import random

import numpy as np
import torch

from .config import DataConfig
from .decode import View

INTERPOLATION = "bicubic"  # the release's fine-tune and probe interpolation (timm's and PIL's bicubic)


@contextlib.contextmanager
def torch_seeded_python_rngs():
    """Seed Python's `random` and NumPy's global generator from torch's, restore them on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def randaug_policy(cfg: DataConfig) -> str:
    """timm's RandAugment policy string for the config: "rand-m9-mstd0.5-inc1" for the recipe."""
    parts = [f"rand-m{cfg.randaug_magnitude}", f"n{cfg.randaug_num_ops}", f"mstd{cfg.randaug_magnitude_std:g}"]
    if cfg.randaug_increasing:
        parts.append("inc1")
    return "-".join(parts)


def timm_finetune_transform(cfg: DataConfig):
    """timm's fine-tuning transform as the release builds it: (primary, secondary, final).

    primary: RandomResizedCropAndInterpolation(supervised_crop_scale, crop_ratio, bicubic) + flip;
    secondary: RandAugment (or nothing); final: ToTensor, Normalize, RandomErasing (or not).
    """
    from timm.data import create_transform

    return create_transform(
        input_size=cfg.img_size, is_training=True, scale=cfg.supervised_crop_scale, ratio=cfg.crop_ratio,
        hflip=0.5 if cfg.hflip else 0.0, color_jitter=None,
        auto_augment=randaug_policy(cfg) if cfg.randaug_num_ops > 0 else None,
        interpolation=INTERPOLATION, re_prob=cfg.random_erasing, re_mode="pixel", re_count=1,
        mean=cfg.mean, std=cfg.std, separate=True,
    )


class FinetuneAugment:
    """uint8 (3, S, S) crop -> uint8 (3, S, S) after timm's RandAugment (the `secondary` stage)."""

    def __init__(self, cfg: DataConfig):
        _, secondary, _ = timm_finetune_transform(cfg)
        self.ops = secondary  # a timm Compose holding timm's RandAugment

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        with torch_seeded_python_rngs():
            pil = self.ops(pil)
        return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)


class BatchErasing:
    """timm's RandomErasing on a normalised float batch (B, 3, S, S), one draw per image, in place."""

    def __init__(self, cfg: DataConfig):
        from timm.data.random_erasing import RandomErasing

        _, _, final = timm_finetune_transform(cfg)
        erasing = [t for t in final.transforms if isinstance(t, RandomErasing)]
        if len(erasing) != 1:
            raise RuntimeError(f"timm's fine-tune transform holds {len(erasing)} RandomErasing ops, expected 1: {final}")
        self.erase = erasing[0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch_seeded_python_rngs():
            return self.erase(images)


class SingleDrawView:
    """The release's linear-probe RandomResizedCrop: one draw, clamped, placed uniformly.

    The area fraction is uniform in `scale` and the aspect ratio log-uniform in `ratio`, once; the
    box is then cut to the image's width and height (so it may be less than the drawn area, and
    not exactly of the drawn ratio), at a uniform position. Unlike torchvision's, there is no
    retry loop and never the whole-image fallback."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool):
        self._scale = (float(scale[0]), float(scale[1]))
        self._log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self._hflip = hflip

    def __call__(self, image) -> View:
        width, height = image.size
        u = torch.rand(5, dtype=torch.float64).tolist()
        (s0, s1), (r0, r1) = self._scale, self._log_ratio
        target_area = width * height * (s0 + (s1 - s0) * u[0])
        aspect = math.exp(r0 + (r1 - r0) * u[1])
        w = min(max(1, int(round(math.sqrt(target_area * aspect)))), width)
        h = min(max(1, int(round(math.sqrt(target_area / aspect)))), height)
        top = min(int(u[2] * (height - h + 1)), height - h)
        left = min(int(u[3] * (width - w + 1)), width - w)
        return View(top, left, h, w, self._hflip and u[4] < 0.5)


class FixedSizeView:
    """Resize(S / resize_ratio) of the short side, then RandomCrop(S) + flip: one box in original pixels.

    The paper's "fixed size" crop (Table 1e): every view covers the same area, a square of
    side `S * short / (S / resize_ratio)` original pixels (224/256 of the short side for the
    default ratio), placed uniformly over the resized image's integer positions."""

    def __init__(self, size: int, resize_ratio: float, hflip: bool):
        self._size = size
        self._resized_short = max(size, int(size / resize_ratio))
        self._hflip = hflip

    def __call__(self, image) -> View:
        width, height = image.size
        scale = min(width, height) / self._resized_short  # original pixels per resized pixel
        resized_w, resized_h = round(width / scale), round(height / scale)
        side = max(1, round(self._size * scale))
        side_h, side_w = min(side, height), min(side, width)
        top_steps = int(torch.randint(0, max(resized_h - self._size, 0) + 1, ()))
        left_steps = int(torch.randint(0, max(resized_w - self._size, 0) + 1, ()))
        top = min(round(top_steps * scale), height - side_h)
        left = min(round(left_steps * scale), width - side_w)
        flip = self._hflip and bool(torch.rand(()) < 0.5)
        return View(top, left, side_h, side_w, flip)


def color_jitter(cfg: DataConfig):
    """torchvision's ColorJitter(b, c, s) with b = c = s = `cfg.color_jitter` (on uint8), or None."""
    if cfg.color_jitter <= 0:
        return None
    from torchvision.transforms import v2

    j = cfg.color_jitter
    return v2.ColorJitter(brightness=j, contrast=j, saturation=j)


def eval_crop_ratio(cfg: DataConfig) -> float:
    """The eval centre crop's share of the resized short side: the configured one, else the
    release's rule: 224/256 = 0.875 up to 224 px, the whole short side (1.0) above."""
    if cfg.eval_crop_ratio is not None:
        return cfg.eval_crop_ratio
    return 0.875 if cfg.img_size <= 224 else 1.0
