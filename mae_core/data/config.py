"""`DataConfig`: everything the data pipeline needs, owned by the data component."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..structured import bounded

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(kw_only=True)
class DataConfig:
    """Where the shards are and how to turn them into batches (per rank).

    `url` is the dataset root holding `{split}-NNNNNN.tar` shards and `{split}.manifest.json`:
    a local folder, `file://...`, or `s3://bucket/prefix` (a brace pattern of shard names selects a
    subset). Lists from YAML are accepted wherever a tuple is expected.
    """

    url: str
    img_size: int = bounded(224, ge=1, le=8192)
    batch_size: int = bounded(64, ge=1, le=1_000_000)  # per rank
    num_workers: int = bounded(8, ge=0, le=1024)
    shuffle_buffer: int = bounded(1000, ge=0, le=10**8)  # samples held per worker for the sample shuffle; 0 or 1: no shuffle
    crop_scale: tuple[float, float] = (0.2, 1.0)  # pretraining RandomResizedCrop area range
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    # Pretraining crop (Table 1e): "random_size" = RandomResizedCrop(crop_scale, crop_ratio);
    # "fixed_size" = resize the short side to img_size / fixed_crop_ratio, then a random
    # img_size x img_size crop (224 of 256 for the default).
    pretrain_crop: Literal["random_size", "fixed_size"] = "random_size"
    fixed_crop_ratio: float = bounded(0.875, gt=0, le=1)
    # Pretraining colour jitter (Table 1e "+ color jit"): torchvision ColorJitter(b, c, s) with
    # b = c = s = this; 0 = off (the recipe: jitter hurts MAE). The paper's row uses 0.4.
    color_jitter: float = bounded(0.0, ge=0, le=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Fine-tuning and linear probing use the supervised recipe's wider crop range.
    supervised_crop_scale: tuple[float, float] = (0.08, 1.0)
    # Fine-tuning: timm's RandAugment "rand-m{magnitude}-n{num_ops}-mstd{std}[-inc1]" (the recipe:
    # rand-m9-mstd0.5-inc1: magnitude 9 of timm's 10 levels, jittered per op with std 0.5, each op
    # applied with probability 0.5, the "increasing" op variants), then timm's random erasing in
    # 'pixel' mode with this probability (mae_core/data/augment.py).
    randaug_num_ops: int = bounded(2, ge=0, le=16)
    randaug_magnitude: int = bounded(9, ge=0, le=10)
    randaug_magnitude_std: float = bounded(0.5, ge=0, le=100)
    randaug_increasing: bool = True
    random_erasing: float = 0.25
    # Eval: resize the short side to img_size / ratio, centre crop. null: the release's rule,
    # 0.875 up to 224 px and 1.0 (the whole short side) above.
    eval_crop_ratio: float | None = bounded(None, gt=0, le=1)
    draft: bool = True  # decode JPEGs at 1/2, 1/4, 1/8 scale when the crop is that much larger
    shard_retries: int = bounded(3, ge=0, le=1000)  # re-opens of a shard that fails to read, before giving up
    retry_delay_s: float = bounded(1.0, ge=0, le=3600)
    pin_memory: bool = False
    prefetch_factor: int = bounded(2, ge=1, le=1024)
    s3_endpoint_url: str | None = None  # S3-compatible endpoint; otherwise the AWS env / config

    def __post_init__(self) -> None:
        self.crop_scale = _pair("crop_scale", self.crop_scale, low=0.0, high=1.0)
        self.supervised_crop_scale = _pair("supervised_crop_scale", self.supervised_crop_scale, low=0.0, high=1.0)
        self.crop_ratio = _pair("crop_ratio", self.crop_ratio, low=0.0, high=float("inf"))
        self.mean = _triple("mean", self.mean)
        self.std = _triple("std", self.std)
        if not isinstance(self.url, str) or not self.url.strip():
            raise ValueError("DataConfig.url must name the dataset root (a folder, file:// or s3:// URL)")
        check_data_url(self.url)
        _check(self.img_size >= 1, "img_size", self.img_size, "must be a positive number of pixels")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1 (images per rank)")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, "must be >= 0")
        _check(self.shuffle_buffer >= 0, "shuffle_buffer", self.shuffle_buffer, "must be >= 0")
        _check(min(self.std) > 0, "std", self.std, "must be positive")
        if self.eval_crop_ratio is not None:
            _check(0 < self.eval_crop_ratio <= 1, "eval_crop_ratio", self.eval_crop_ratio, "must be in (0, 1]")
        _check(0 < self.fixed_crop_ratio <= 1, "fixed_crop_ratio", self.fixed_crop_ratio, "must be in (0, 1]")
        _check(0 <= self.color_jitter <= 1, "color_jitter", self.color_jitter, "must be in [0, 1]")
        _check(self.randaug_num_ops >= 0, "randaug_num_ops", self.randaug_num_ops, "must be >= 0")
        _check(0 <= self.randaug_magnitude <= 10, "randaug_magnitude", self.randaug_magnitude, "must be in 0..10 (timm's levels)")
        _check(self.randaug_magnitude_std >= 0, "randaug_magnitude_std", self.randaug_magnitude_std, "must be >= 0")
        _check(0 <= self.random_erasing <= 1, "random_erasing", self.random_erasing, "is a probability in [0, 1]")
        _check(self.shard_retries >= 0, "shard_retries", self.shard_retries, "must be >= 0")
        _check(self.retry_delay_s >= 0, "retry_delay_s", self.retry_delay_s, "must be >= 0")
        _check(self.prefetch_factor >= 1, "prefetch_factor", self.prefetch_factor, "must be >= 1")

    @property
    def storage_options(self) -> dict:
        """fsspec options for `url`: only the endpoint; credentials come from the AWS environment."""
        return {"endpoint_url": self.s3_endpoint_url} if self.s3_endpoint_url else {}


SUPPORTED_SCHEMES = ("file", "s3")


def check_data_url(url: str) -> None:
    """A dataset root the loader can open: a local folder, file://PATH or s3://BUCKET[/PREFIX]."""
    if "://" not in url:
        return
    scheme, rest = url.split("://", 1)
    if scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f"DataConfig.url {url!r} has an unsupported scheme {scheme!r}: use a local folder, "
                         f"file://PATH or s3://BUCKET/PREFIX")
    if scheme == "s3" and not rest.split("/", 1)[0]:
        raise ValueError(f"DataConfig.url {url!r} names no bucket: use s3://BUCKET/PREFIX")
    if scheme == "file" and not rest.startswith("/"):
        raise ValueError(f"DataConfig.url {url!r}: a file:// URL needs an absolute path (file:///data/shards)")


def _check(ok: bool, name: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"DataConfig.{name} {why}, got {value!r}")


def _pair(name: str, value, *, low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"DataConfig.{name} must be a pair (min, max), got {value!r}") from None
    _check(low < a <= b <= high, name, value, f"must satisfy {low} < min <= max <= {high}")
    return (a, b)


def _triple(name: str, value) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    _check(len(values) == 3, name, value, "must hold 3 numbers, one per RGB channel")
    return values  # type: ignore[return-value]
