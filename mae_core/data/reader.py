"""Samples out of tar shards (webdataset's tar iteration), with retries for shards that fail to read."""

from __future__ import annotations

import logging
import tarfile
import time
from typing import Iterator

from webdataset.tariterators import group_by_keys, tar_file_expander

from . import io
from .errors import ShardReadError

log = logging.getLogger(__name__)

READ_ERRORS = (OSError, tarfile.TarError, EOFError, ValueError)


class ShortShard(EOFError):
    """The tar ended before the manifest's sample count (tarfile takes a cut header for the end)."""


def iter_shard(
    url: str, *, expected: int | None = None, storage_options: dict | None = None, retries: int = 3, delay_s: float = 1.0
) -> Iterator[dict]:
    """The samples of one shard as dicts {"__key__", "__url__", ext: bytes, ...}.

    A read that fails (network, missing object, damaged tar, or fewer samples than `expected`) is
    retried from the start of the shard, skipping the samples already delivered; after `retries`
    retries it raises ShardReadError naming the URL."""
    delivered = 0
    for attempt in range(retries + 1):
        try:
            with io.open_read(url, storage_options) as stream:
                samples = group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
                for index, sample in enumerate(samples):
                    if index >= delivered:
                        delivered += 1
                        yield sample
            if expected is not None and delivered < expected:
                raise ShortShard(f"ended after {delivered} of {expected} samples")
            return
        except READ_ERRORS as err:
            reason = f"{type(err).__name__}: {err.args[0] if err.args else err}"
            if attempt == retries:
                raise ShardReadError(f"cannot read shard {url} ({retries + 1} attempts): {reason}") from err
            log.warning("reading shard %s failed (%s); retry %d of %d", url, reason, attempt + 1, retries)
            time.sleep(delay_s * (attempt + 1))


def iter_shards(urls: list[str], counts: list[int] | None = None, **kw) -> Iterator[dict]:
    for url, count in zip(urls, counts or [None] * len(urls)):
        yield from iter_shard(url, expected=count, **kw)


IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


class BadSample(ValueError):
    """A sample that cannot become (image, label): no image, no or bad label."""


def parse_label(sample: dict, num_classes: int) -> int:
    raw = sample.get("cls")
    if raw is None:
        raise BadSample("no .cls label")
    try:
        label = int(raw)
    except ValueError:
        raise BadSample(f"label {raw[:20]!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise BadSample(f"label {label} outside the manifest's {num_classes} classes")
    return label


def image_bytes(sample: dict) -> bytes:
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        found = ", ".join(k for k in sample if not k.startswith("__")) or "nothing"
        raise BadSample(f"no image (found {found})")
    return data
