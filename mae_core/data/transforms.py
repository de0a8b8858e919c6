"""Per-mode augmentation, split in two halves:

- `SampleTransform`: encoded image bytes -> uint8 (3, S, S) (channels-last strides). Chooses the view (crop box + flip)
  from the image header, then decodes only what that view needs (see decode.py). Fine-tuning adds
  RandAugment here, on uint8.
- `BatchTransform`: the stacked uint8 batch -> normalised float32, once per batch rather than per
  image; fine-tuning adds per-image random erasing after normalising (as the paper's recipe does).

Randomness comes from torch's global generator, which the loader seeds per batch inside
`torch.random.fork_rng`, so results depend only on (seed, epoch, rank, stream, batch index).

Modes: pretrain = RandomResizedCrop(crop_scale, bicubic) + flip (no colour jitter: it hurts MAE);
finetune = RandomResizedCrop(supervised_crop_scale) + flip + RandAugment + random erasing
(mixup/cutmix act on batches and belong to the engine); linprobe = RandomResizedCrop(
supervised_crop_scale) + flip; eval = resize the short side to S / eval_crop_ratio + centre crop.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

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


class JitteredRandAugment(v2.RandAugment):
    """RandAugment whose magnitude is drawn per image from N(magnitude, std) (timm's "mstd")."""

    def __init__(self, num_ops: int, magnitude: int, magnitude_std: float, fill):
        super().__init__(num_ops=num_ops, magnitude=magnitude, interpolation=v2.InterpolationMode.BILINEAR, fill=fill)
        self._mean_magnitude = magnitude
        self._magnitude_std = magnitude_std

    def forward(self, *inputs):
        if self._magnitude_std > 0:
            drawn = self._mean_magnitude + self._magnitude_std * float(torch.randn(()))
            self.magnitude = int(min(max(round(drawn), 0), self.num_magnitude_bins - 1))
        return super().forward(*inputs)


class SampleTransform:
    """Encoded image bytes -> uint8 tensor (3, img_size, img_size) for one mode."""

    def __init__(self, cfg: DataConfig, mode: str):
        check_mode(mode)
        self.size = cfg.img_size
        self.draft = cfg.draft
        # Training decodes with libjpeg-turbo's fast IDCT and upsampling; eval as PIL does (decode.py).
        self.fast_decode = mode != "eval"
        if mode == "eval":
            self.view = CentreView(cfg.img_size, cfg.eval_crop_ratio)
        else:
            scale = cfg.crop_scale if mode == "pretrain" else cfg.supervised_crop_scale
            self.view = RandomResizedView(cfg.img_size, scale, cfg.crop_ratio, cfg.hflip)
        self.augment = None
        if mode == "finetune" and cfg.randaug_num_ops > 0:
            fill = [round(255 * m) for m in cfg.mean]
            self.augment = JitteredRandAugment(cfg.randaug_num_ops, cfg.randaug_magnitude, cfg.randaug_magnitude_std, fill)

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
            self.erase = v2.RandomErasing(p=cfg.random_erasing, value="random")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = images.to(torch.float32, memory_format=torch.contiguous_format).sub_(self.offset).mul_(self.scale)
        if self.erase is not None:
            # One draw per image: RandomErasing on a batch would erase the same box in all of them.
            out = torch.stack([self.erase(image) for image in out])
        return out
