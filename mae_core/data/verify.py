"""`verify_split`: read every shard back and check it against the manifest, sample by sample."""

from __future__ import annotations

import hashlib
import io as _io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from . import io
from .manifest import Manifest, ShardInfo, read_manifest
from .reader import BadSample, image_bytes, parse_label


@dataclass
class ShardCheck:
    name: str
    samples: int = 0
    problems: list[str] = field(default_factory=list)  # shard-level: unreadable, size, checksum, count
    bad_samples: list[str] = field(default_factory=list)  # "shard key: reason"
    # Samples whose JPEG has restart markers the crop-window decoder can cut segments at (None:
    # the decoder extension is not built here, so not counted).
    segmented: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_samples


@dataclass
class VerifyReport:
    split: str
    shards: list[ShardCheck]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.shards)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def segmented(self) -> int | None:
        counts = [s.segmented for s in self.shards]
        return None if None in counts else sum(counts)


def iter_shard_samples(data: bytes, url: str):
    """The samples of a shard held in memory; raises where the tar is damaged."""
    return group_by_keys(tar_file_expander([{"url": url, "stream": _io.BytesIO(data)}]))


def read_shard_samples(data: bytes, url: str) -> list[dict]:
    return list(iter_shard_samples(data, url))


def check_sample(sample: dict, num_classes: int) -> str | None:
    """Why the sample cannot be trained on, or None."""
    try:
        parse_label(sample, num_classes)
        data = image_bytes(sample)
    except BadSample as err:
        return str(err)
    try:
        image = Image.open(_io.BytesIO(data))
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))  # full entropy decode, small output
        image.load()
    except Exception as err:
        return f"undecodable image ({type(err).__name__}: {str(err).split(' <_io.')[0]})"  # drop the buffer's repr
    return None


def verify_shard(url: str, shard: ShardInfo, num_classes: int, storage_options: dict | None = None) -> ShardCheck:
    check = ShardCheck(shard.name)
    try:
        data = io.read_bytes(url, storage_options)
    except Exception as err:
        check.problems.append(f"{url}: unreadable ({type(err).__name__}: {err})")
        return check
    if len(data) != shard.bytes:
        check.problems.append(f"{url}: {len(data)} bytes, manifest says {shard.bytes}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != shard.sha256:
        check.problems.append(f"{url}: sha256 {digest[:12]}..., manifest says {shard.sha256[:12]}... (modified or corrupted)")
    layout = _restart_layout()
    check.segmented = 0 if layout is not None else None
    try:
        for sample in iter_shard_samples(data, url):
            check.samples += 1
            reason = check_sample(sample, num_classes)
            if reason:
                check.bad_samples.append(f"{shard.name} {sample['__key__']}: {reason}")
            elif layout is not None and layout(image_bytes(sample)) is not None:
                check.segmented += 1
    except Exception as err:
        message = str(err.args[0] if err.args else err).split(" @ <")[0]  # webdataset appends the stream's repr
        check.problems.append(f"{url}: damaged tar after {check.samples} samples ({type(err).__name__}: {message})")
    if check.samples != shard.count:
        check.problems.append(f"{url}: {check.samples} samples, manifest says {shard.count}")
    return check


def _restart_layout():
    try:
        from ._jpegcrop import restart_layout
    except ImportError:
        return None
    return restart_layout


def verify_split(
    root: str, split: str, *, storage_options: dict | None = None, workers: int = 1,
    on_shard: Callable[[ShardCheck], None] | None = None,
) -> VerifyReport:
    manifest: Manifest = read_manifest(root, split, storage_options=storage_options)
    args = [(manifest.shard_url(s), s, manifest.num_classes, storage_options) for s in manifest.shards]
    checks: list[ShardCheck] = []
    if workers > 1 and len(args) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(args))) as pool:
            for check in pool.map(verify_shard, *zip(*args)):
                checks.append(check)
                if on_shard:
                    on_shard(check)
    else:
        for a in args:
            checks.append(verify_shard(*a))
            if on_shard:
                on_shard(checks[-1])
    return VerifyReport(split, checks)


def find_splits(root: str, storage_options: dict | None = None) -> list[str]:
    """The splits that have a manifest under `root`."""
    suffix = ".manifest.json"
    if io.is_remote(root):
        fs, path = io.filesystem(root, storage_options)
        names = [p.rsplit("/", 1)[-1] for p in fs.glob(path.rstrip("/") + "/*" + suffix)]
    else:
        local = io.local_path(root)
        names = os.listdir(local) if os.path.isdir(local) else []
    return sorted(n[: -len(suffix)] for n in names if n.endswith(suffix))
