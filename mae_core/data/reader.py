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
    url: str, *, expected: int | None = None, start: int = 0, stop: int | None = None,
    storage_options: dict | None = None, retries: int = 3, delay_s: float = 1.0,
) -> Iterator[dict]:
    """Samples [start, stop) of one shard as dicts {"__key__", "__url__", ext: bytes, ...}; those
    before `start` are read past, not returned. `expected`: the shard's sample count (manifest).

    A read that fails (network, missing object, damaged tar, or the shard ending early) is retried
    from the start of the shard, skipping the samples already delivered; after `retries` retries it
    raises ShardReadError naming the URL."""
    stop = expected if stop is None else stop
    position = start  # next sample to deliver
    for attempt in range(retries + 1):
        try:
            with io.open_read(url, storage_options) as stream:
                index = -1
                for index, sample in enumerate(group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))):
                    if stop is not None and index >= stop:
                        return
                    if index >= position:
                        position += 1
                        yield sample
                if stop is not None and index + 1 < stop:
                    raise ShortShard(f"ended after {index + 1} samples, the manifest lists {expected}")
            return
        except READ_ERRORS as err:
            reason = f"{type(err).__name__}: {str(err.args[0] if err.args else err).split(' @ <')[0]}"
            if attempt == retries:
                raise ShardReadError(f"cannot read shard {url} ({retries + 1} attempts): {reason}") from err
            log.warning("reading shard %s failed (%s); retry %d of %d", url, reason, attempt + 1, retries)
            time.sleep(delay_s * (attempt + 1))


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
