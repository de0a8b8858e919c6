"""Writing a split as WebDataset shards `{split}-NNNNNN.tar` + `{split}.manifest.json`.

- The sample-to-shard plan is a pure function of the image list, seed, maxcount and maxsize, so a
  re-run knows what every shard should hold: a shard already at its final name whose keys and
  labels match the plan is kept (resume), anything else is rewritten.
- A shard is written under a temporary name and renamed (local) or uploaded in one piece (S3), so a
  crash never leaves half a shard under a final name. The manifest is written last.
- Each sample is `key.jpg` (the original JPEG, or re-encoded at `resize` shorter side; other
  formats and CMYK are re-encoded as RGB JPEG) + `key.cls` (the label as ASCII digits).
- JPEGs are stored with a restart marker every `restart_columns` pixels of each block row
  (losslessly: the same DCT coefficients, so the same pixels in any decoder; ~2% smaller, as the
  Huffman tables are optimised at the same time). The loader's crop-window decoder then
  entropy-decodes only the restart segments a crop covers instead of everything above its bottom
  row (decode.py, docs/benchmarks.md). Needs the `_jpegcrop` extension; without it, or for a JPEG
  libjpeg-turbo refuses in strict mode, the bytes are stored as they are.
- Unreadable images are reported by file name and left out; the shard holds the rest.
"""

from __future__ import annotations

import hashlib
import io as _io
import os
import random
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable

from PIL import Image

from . import io
from .errors import DataError
from .manifest import Manifest, ShardInfo, read_manifest, shard_name, write_manifest
from .sources import SourceImage, SplitSource

try:
    from . import _jpegcrop  # built at install when a C compiler and libjpeg's headers are there
except ImportError:
    _jpegcrop = None

TAR_OVERHEAD = 1536  # two 512-byte member headers plus padding, per sample
FIXED_MTIME = 0  # identical inputs give byte-identical shards (and checksums)


@dataclass(kw_only=True)
class ShardOptions:
    maxcount: int = 1000  # images per shard: 1000 gives ImageNet's ~1282 train shards
    maxsize: int | None = None  # bytes per shard (estimated from the source files' sizes)
    resize: int | None = None  # re-encode with this shorter side (never upscales); None: original bytes
    quality: int = 95
    # Pixels of a block row per restart segment (rounded to whole MCUs): 32 decoded fastest of
    # 16/32/64 on 500 x 375 photos (docs/benchmarks.md). 0: store the JPEG's own entropy coding.
    restart_columns: int = 32
    workers: int = 1
    seed: int = 0
    storage_options: dict | None = None

    def __post_init__(self) -> None:
        if self.maxcount < 1:
            raise DataError(f"--maxcount must be >= 1, got {self.maxcount}")
        if self.maxsize is not None and self.maxsize < 1:
            raise DataError(f"--maxsize must be positive, got {self.maxsize}")
        if self.restart_columns < 0:
            raise DataError(f"--restart-columns must be >= 0 (0: no restart markers), got {self.restart_columns}")
        if self.resize is not None and self.resize < 1:
            raise DataError(f"--resize must be a positive shorter side in pixels, got {self.resize}")


@dataclass
class ShardResult:
    index: int
    info: ShardInfo
    reused: bool  # already present and matching the plan: nothing written
    problems: list[str] = field(default_factory=list)


def plan_shards(images: list[SourceImage], *, maxcount: int, maxsize: int | None, seed: int) -> list[list[SourceImage]]:
    """Shuffle (seeded, so classes mix across shards) and cut into shards by count and size."""
    order = sorted(images, key=lambda im: im.key)
    random.Random(seed).shuffle(order)
    shards: list[list[SourceImage]] = []
    current: list[SourceImage] = []
    size = 0
    for image in order:
        estimate = _file_size(image.path) + TAR_OVERHEAD
        if current and (len(current) >= maxcount or (maxsize is not None and size + estimate > maxsize)):
            shards.append(current)
            current, size = [], 0
        current.append(image)
        size += estimate
    if current:
        shards.append(current)
    return shards


def write_split(
    source: SplitSource, dest: str, options: ShardOptions, *, on_shard: Callable[[ShardResult], None] | None = None
) -> tuple[Manifest, list[str]]:
    """Write (or complete) all shards of a split, then its manifest. Returns (manifest, problems)."""
    io.make_dirs(dest, options.storage_options)
    plan = plan_shards(source.images, maxcount=options.maxcount, maxsize=options.maxsize, seed=options.seed)
    encoding = _encoding(options)
    previous = _previous_manifest(dest, source.split, options.storage_options)
    # Shards already in place are kept only if they were encoded as these would be (a re-run with
    # another --resize or --restart-columns rewrites them all).
    reuse = previous is None or _recorded_encoding(previous) == encoding
    recorded = {shard.name: shard for shard in previous.shards} if previous is not None else {}
    tasks = [(dest, source.split, index, images, options, reuse, recorded.get(shard_name(source.split, index)))
             for index, images in enumerate(plan)]
    results: list[ShardResult] = []
    if options.workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(options.workers, len(tasks))) as pool:
            for future in as_completed([pool.submit(write_shard, *task) for task in tasks]):
                results.append(future.result())
                if on_shard:
                    on_shard(results[-1])
    else:
        for task in tasks:
            results.append(write_shard(*task))
            if on_shard:
                on_shard(results[-1])
    results.sort(key=lambda r: r.index)
    problems = source.problems + [p for r in results for p in r.problems]
    manifest = Manifest(
        split=source.split, classes=source.classes, shards=[r.info for r in results],
        info={"made_by": "maectl data shard", "seed": options.seed, "maxcount": options.maxcount,
              "maxsize": options.maxsize, "inputs_left_out": len(problems)} | encoding,
    )
    write_manifest(manifest, dest, storage_options=options.storage_options)
    return manifest, problems


def _encoding(options: ShardOptions) -> dict:
    """How samples are encoded, as the manifest records it."""
    return {"resize": options.resize, "restart_columns": options.restart_columns if restart_markers_available() else 0}


def _previous_manifest(dest: str, split: str, storage_options: dict | None) -> Manifest | None:
    try:
        return read_manifest(dest, split, storage_options=storage_options)
    except Exception:  # none yet, or unreadable: nothing to go by
        return None


def _recorded_encoding(manifest: Manifest) -> dict:
    """The encoding a manifest records (manifests from before restart markers: none)."""
    return {"resize": manifest.info.get("resize"), "restart_columns": manifest.info.get("restart_columns", 0)}


def write_shard(dest: str, split: str, index: int, images: list[SourceImage], options: ShardOptions,
                reuse: bool = True, recorded: ShardInfo | None = None) -> ShardResult:
    """Write one shard (a process-pool task), unless a matching one is already in place (and
    `reuse` allows keeping it; `recorded`: what the previous manifest says it holds)."""
    name = shard_name(split, index)
    url = io.join_url(dest, name)
    existing = existing_shard(url, name, images, options.storage_options, recorded) if reuse else None
    if existing is not None:
        info, missing = existing
        notes = [f"{image.path}: left out when {info.name} was first written" for image in missing]
        return ShardResult(index, info, reused=True, problems=notes)
    import webdataset as wds

    problems: list[str] = []
    fd, tmp = io.staging_file(url)
    try:
        with os.fdopen(fd, "wb") as raw:
            sink = _HashingWriter(raw)
            with wds.TarWriter(sink, mtime=FIXED_MTIME) as tar:
                for image in images:
                    try:
                        data = encode_image(image.path, options.resize, options.quality, options.restart_columns)
                    except Exception as err:  # any decoder failure: report the file, keep going
                        problems.append(f"{image.path}: unreadable image ({type(err).__name__}: {err}); left out")
                        continue
                    tar.write({"__key__": image.key, "jpg": data, "cls": image.label})
                    sink.count += 1
        io.publish_file(tmp, url, options.storage_options)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    info = ShardInfo(name, sink.count, sink.size, sink.digest.hexdigest())
    return ShardResult(index, info, reused=False, problems=problems)


def existing_shard(url: str, name: str, images: list[SourceImage], storage_options: dict | None,
                   recorded: ShardInfo | None = None) -> tuple[ShardInfo, list[SourceImage]] | None:
    """(info, planned images it lacks) when `url` exists, reads back whole (its checksum the one
    `recorded` in the previous manifest, or without one, the tar's end-of-archive blocks in place:
    a shard cut at a member boundary reads back as a shorter valid tar), and holds only planned
    samples, in plan order, with planned labels; None when it must be (re)written."""
    from .verify import read_shard_samples

    if not io.exists(url, storage_options):
        return None
    try:
        data = io.read_bytes(url, storage_options)
        if recorded is not None and (len(data) != recorded.bytes or hashlib.sha256(data).hexdigest() != recorded.sha256):
            return None
        if len(data) % 512 != 0 or data[-1024:] != bytes(1024):
            return None
        samples = read_shard_samples(data, url)
    except Exception:
        return None
    planned = {image.key: image for image in images}
    keys = [s["__key__"] for s in samples]
    order = {image.key: i for i, image in enumerate(images)}
    if any(k not in planned for k in keys) or keys != sorted(keys, key=order.__getitem__):
        return None
    if any(s.get("cls") is None or int(s["cls"]) != planned[s["__key__"]].label or "jpg" not in s for s in samples):
        return None
    present = set(keys)
    info = ShardInfo(name, len(samples), len(data), hashlib.sha256(data).hexdigest())
    return info, [image for image in images if image.key not in present]


def encode_image(path: str, resize: int | None, quality: int, restart_columns: int = 0) -> bytes:
    """The bytes to store: the file itself when it is an RGB/greyscale JPEG that decodes and needs
    no resize; otherwise a re-encoded RGB JPEG; with restart markers when `restart_columns` > 0
    (module docstring). Raises on anything PIL cannot fully decode."""
    with open(path, "rb") as f:
        data = f.read()
    image = Image.open(_io.BytesIO(data))
    if resize is None and image.format == "JPEG" and image.mode in ("RGB", "L"):
        # Decoding at 1/8 scale still reads every entropy-coded byte, so truncation is caught cheaply.
        image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return with_restart_markers(data, restart_columns)
    if resize is not None:
        scale = resize / min(image.size)
        if scale < 1:
            target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image.draft("RGB", target)
            image = image.convert("RGB").resize(target, Image.Resampling.LANCZOS)
    out = _io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return with_restart_markers(out.getvalue(), restart_columns)


def restart_markers_available() -> bool:
    return _jpegcrop is not None


def with_restart_markers(data: bytes, columns: int) -> bytes:
    """`data` re-coded losslessly with a restart marker every ~`columns` pixels of a block row; the
    bytes unchanged when `columns` is 0, the extension is missing, or libjpeg-turbo refuses them
    in strict mode (PIL decoded them: the loader's fallbacks will too)."""
    if columns <= 0 or _jpegcrop is None:
        return data
    try:
        return _jpegcrop.with_restarts(data, columns)
    except ValueError:
        return data


class _HashingWriter:
    """A write-only file that checksums and counts what passes through to the real file."""

    def __init__(self, raw):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0
        self.count = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
