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
    """torchvision's RandomResizedCrop box sampler, applied to the header-only image."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool):
        self._crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=v2.InterpolationMode.BICUBIC)
        self._hflip = hflip

    def __call__(self, image) -> View:
        box = self._crop.make_params([image])  # reads image.size only
        flip = self._hflip and bool(torch.rand(()) < 0.5)
        return View(box["top"], box["left"], box["height"], box["width"], flip)


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
        out = decode_view(image, self.view(image), self.size, draft=self.draft)
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
