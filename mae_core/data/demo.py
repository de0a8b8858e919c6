"""A synthetic, class-structured dataset in ImageNet's layout, for the demo job and the tests.

Each class is a shape or a texture: a disk, square, triangle, ring or cross of random size,
position and rotation, or horizontal, vertical or diagonal stripes, a checkerboard or dots that fill
the image at a random frequency and phase. Images are grey levels (the three channels equal, plus
per-pixel noise): a random background level, a foreground brighter or darker by a random contrast,
a random background gradient and noise, all drawn from the same distribution for every class.
Neither brightness nor contrast says anything about the class: telling classes apart takes shape
and texture features, which is what pretraining must learn. Classes beyond ten repeat the patterns
at another scale/frequency.

Measured with the demo job (`jobs/pretrain-vit-tiny-demo.yaml`: `mae_vit_micro_patch4_32`, 60
epochs, ~95 s of training on 2 CPU cores), kNN top-1 on the 200 val images with mean-pooled
features: pretrained 74% against 47% for a randomly initialised encoder (train seeds 0 and 1;
chance 10%); a linear probe 79 / 75.5% against 59 / 60.5%. See `docs/data.md` for the figures and
`tests/test_demo_signal.py` for the check. Why it looks like this (each measured): with random
colours (an earlier version) a tiny MAE's features are mostly colour, and pretrained and random
encoders both sat near chance (kNN ~15% vs ~13%) even after 40 epochs; small shapes anywhere in
the image left the pretrained encoder's lead seed-dependent (+7 to +21 points).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
from PIL import Image

from .manifest import Manifest
from .sources import scan_split
from .writer import ShardOptions, write_split

PATTERNS = ("disk", "square", "triangle", "ring", "cross", "hstripes", "vstripes", "diagonal", "checker", "dots")


def class_name(index: int) -> str:
    """WordNet-style ids like ImageNet's, so tools that expect `n########` folders work."""
    return f"n{index:08d}"


def make_demo_dataset(
    dest: str, *, num_classes: int = 10, train_per_class: int = 100, val_per_class: int = 20,
    image_size: int = 64, seed: int = 0,
) -> str:
    """Write `dest/{train,val}/<wnid>/<wnid>_<i>.JPEG`; returns `dest`. ~1 ms per 64 px image."""
    if num_classes < 2 or image_size < 16:
        raise ValueError(f"need num_classes >= 2 and image_size >= 16, got {num_classes}, {image_size}")
    for split, per_class, stream in (("train", train_per_class, 0), ("val", val_per_class, 1)):
        for label in range(num_classes):
            folder = os.path.join(dest, split, class_name(label))
            os.makedirs(folder, exist_ok=True)
            rng = np.random.default_rng([seed, stream, label])
            for i in range(per_class):
                pixels = render(label, image_size, rng)
                Image.fromarray(pixels).save(os.path.join(folder, f"{class_name(label)}_{i}.JPEG"), quality=90)
    return dest


def build_demo_shards(
    images_dir: str, shards_url: str, *, num_classes: int = 10, train_per_class: int = 100, val_per_class: int = 20,
    image_size: int = 64, seed: int = 0, maxcount: int = 64, workers: int = 1, storage_options: dict | None = None,
) -> dict[str, Manifest]:
    """Generate the images into `images_dir` and shard both splits to `shards_url`."""
    make_demo_dataset(images_dir, num_classes=num_classes, train_per_class=train_per_class,
                      val_per_class=val_per_class, image_size=image_size, seed=seed)
    options = ShardOptions(maxcount=maxcount, workers=workers, seed=seed, storage_options=storage_options)
    train = scan_split(images_dir, "train")
    val = scan_split(images_dir, "val", classes=train.classes)
    return {s.split: write_split(s, shards_url, options)[0] for s in (train, val)}


def render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class `label`: uint8 (size, size, 3)."""
    pattern = PATTERNS[label % len(PATTERNS)]
    variant = label // len(PATTERNS)
    background, foreground = _colours(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # [0, 1)
    image = _gradient(background, xx, yy, rng)
    mask = _MASKS[pattern](xx, yy, rng, variant)
    image = image * (1 - mask[..., None]) + foreground * mask[..., None]
    image += rng.normal(0, rng.uniform(0.02, 0.07), image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grey background and foreground levels; the foreground is lighter or darker at random."""
    level = rng.uniform(0.1, 0.9)
    contrast = rng.choice((-1.0, 1.0)) * rng.uniform(0.45, 0.7)  # always visible
    if not 0 <= level + contrast <= 1:
        contrast = -contrast
    background = np.full(3, level)
    return background, np.clip(background + contrast, 0, 1)


def _gradient(colour: np.ndarray, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    return np.clip(colour + (ramp - 0.5) * rng.uniform(0, 0.3), 0, 1)


def _frame(xx, yy, rng, variant, *, rotate=True):
    """Coordinates centred on a random point, scaled by a random radius, optionally rotated."""
    radius = rng.uniform(0.3, 0.45) / (1 + 0.4 * variant)
    cx, cy = 0.5 + rng.uniform(-0.15, 0.15, 2)  # large and near the centre: a 32 px crop keeps it
    u, v = (xx - cx) / radius, (yy - cy) / radius
    if rotate:
        a = rng.uniform(0, 2 * np.pi)
        u, v = np.cos(a) * u - np.sin(a) * v, np.sin(a) * u + np.cos(a) * v
    return u, v


def _soft(distance: np.ndarray, width: float = 0.08) -> np.ndarray:
    """Anti-aliased inside-ness of a signed distance (negative inside)."""
    return np.clip(0.5 - distance / width, 0, 1)


def _stripes(coordinate, rng, variant):
    frequency = rng.uniform(4, 6) * (1 + 0.5 * variant)
    return (np.sin(2 * np.pi * frequency * coordinate + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)


def _disk(xx, yy, rng, variant):
    u, v = _frame(xx, yy, rng, variant, rotate=False)
    return _soft(np.sqrt(u * u + v * v) - 1)


def _square(xx, yy, rng, variant):
    u, v = _frame(xx, yy, rng, variant)
    return _soft(np.maximum(np.abs(u), np.abs(v)) - 0.8)


def _triangle(xx, yy, rng, variant):
    u, v = _frame(xx, yy, rng, variant)
    edges = [np.cos(a) * u + np.sin(a) * v for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
    return _soft(np.maximum.reduce(edges) - 0.5)


def _ring(xx, yy, rng, variant):
    u, v = _frame(xx, yy, rng, variant, rotate=False)
    return _soft(np.abs(np.sqrt(u * u + v * v) - 0.75) - 0.22)


def _cross(xx, yy, rng, variant):
    u, v = _frame(xx, yy, rng, variant)
    bar = lambda a, b: np.maximum(np.abs(a) - 1, np.abs(b) - 0.28)  # noqa: E731
    return _soft(np.minimum(bar(u, v), bar(v, u)))


def _hstripes(xx, yy, rng, variant):
    return _stripes(yy, rng, variant)


def _vstripes(xx, yy, rng, variant):
    return _stripes(xx, rng, variant)


def _diagonal(xx, yy, rng, variant):
    return _stripes((xx + yy) / np.sqrt(2), rng, variant)


def _checker(xx, yy, rng, variant):
    cells = rng.uniform(3, 5) * (1 + 0.5 * variant)
    ox, oy = rng.uniform(0, 1, 2)
    board = (np.floor(xx * cells + ox) + np.floor(yy * cells + oy)) % 2
    return board.astype(np.float32)


def _dots(xx, yy, rng, variant):
    cells = rng.uniform(3.5, 5) * (1 + 0.5 * variant)
    fx, fy = (xx * cells + rng.uniform(0, 1)) % 1 - 0.5, (yy * cells + rng.uniform(0, 1)) % 1 - 0.5
    return _soft(np.sqrt(fx * fx + fy * fy) - 0.22, width=0.1)


_MASKS: dict[str, Callable] = {
    "disk": _disk, "square": _square, "triangle": _triangle, "ring": _ring, "cross": _cross,
    "hstripes": _hstripes, "vstripes": _vstripes, "diagonal": _diagonal, "checker": _checker, "dots": _dots,
}
