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
# Pauses between re-reads of a failing shard double from `delay_s` up to this.
MAX_RETRY_DELAY_S = 30.0
# The member a stand-in for an unreadable sample carries (the reason); the loader counts it as skipped.
UNREADABLE = "__unreadable__"


class ShortShard(EOFError):
    """The tar ended before the manifest's sample count (tarfile takes a cut header for the end)."""


def retry_delay(attempt: int, delay_s: float) -> float:
    """Seconds to wait before re-read number `attempt + 1`: delay_s, 2 delay_s, 4 delay_s, ... capped."""
    return min(delay_s * 2**attempt, MAX_RETRY_DELAY_S)


def iter_shard(
    url: str, *, expected: int | None = None, start: int = 0, stop: int | None = None,
    storage_options: dict | None = None, retries: int = 3, delay_s: float = 1.0, skip_unreadable: bool = False,
) -> Iterator[dict]:
    """Samples [start, stop) of one shard as dicts {"__key__", "__url__", ext: bytes, ...}; those
    before `start` are read past, not returned. `expected`: the shard's sample count (manifest).

    A read that fails (network, a server that stops answering, missing object, damaged tar, or the
    shard ending early) is retried from the start of the shard, skipping the samples already
    delivered, so none is delivered twice or left out; the pauses double from `delay_s` (capped at
    MAX_RETRY_DELAY_S). After `retries` retries it raises ShardReadError naming the URL, or, with
    `skip_unreadable` (and a known `stop`), logs one error and yields a stand-in for each sample not
    delivered ({"__key__", "__url__", UNREADABLE: reason}), so the caller can count them and keep
    its batch plan."""
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
                if not skip_unreadable or stop is None:
                    raise ShardReadError(f"cannot read shard {url} ({retries + 1} attempts): {reason}") from err
                log.error("giving up on shard %s after %d attempts (%s): samples %d-%d of it are skipped",
                          url, retries + 1, reason, position, stop - 1)
                for index in range(position, stop):
                    yield {"__key__": f"unreadable-{index:06d}", "__url__": url, UNREADABLE: reason}
                return
            pause = retry_delay(attempt, delay_s)
            log.warning("reading shard %s failed (%s); retry %d of %d in %.0f s", url, reason, attempt + 1, retries, pause)
            time.sleep(pause)


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
