"""The per-split manifest: which shards make a split, how many samples each holds, and checksums.

It is written last by the shard writer and read first by the loader: batch counts per epoch come
from it (no listing or scanning of shards at start-up), and `maectl data verify` checks shards
against it. Stored as `{root}/{split}.manifest.json` beside the shards."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from . import io
from .errors import ManifestError

FORMAT = "maectl.wds-manifest/1"


def manifest_name(split: str) -> str:
    return f"{split}.manifest.json"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name relative to the dataset root
    count: int  # samples in the shard
    bytes: int
    sha256: str


@dataclass
class Manifest:
    split: str
    classes: list[str]  # label i is classes[i] (sorted class folder names, as ImageFolder)
    shards: list[ShardInfo]
    root: str = ""  # where the shards live; set on read, not stored
    info: dict = field(default_factory=dict)  # how it was made: source, resize, seed, skipped

    @property
    def num_samples(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def counts(self) -> list[int]:
        return [s.count for s in self.shards]

    @property
    def sizes(self) -> list[int]:
        return [s.bytes for s in self.shards]

    @property
    def checksums(self) -> list[str]:
        return [s.sha256 for s in self.shards]

    def shard_url(self, shard: ShardInfo) -> str:
        return io.join_url(self.root, shard.name)

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "split": self.split,
            "num_samples": self.num_samples,
            "classes": self.classes,
            "shards": [asdict(s) for s in self.shards],
            "info": self.info,
        }
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str) -> "Manifest":
        try:
            body = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{source}: not valid JSON ({err})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ManifestError(f"{source}: not a maectl shard manifest (expected format {FORMAT!r})")
        try:
            shards = [ShardInfo(str(s["name"]), int(s["count"]), int(s["bytes"]), str(s["sha256"])) for s in body["shards"]]
            manifest = cls(split=str(body["split"]), classes=[str(c) for c in body["classes"]], shards=shards, info=dict(body.get("info", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{source}: missing or malformed field {err}") from None
        bad = [s.name for s in shards if s.count < 0 or s.bytes < 0]
        if bad:
            raise ManifestError(f"{source}: negative count or size for shard {bad[0]}")
        return manifest


def read_manifest(url: str, split: str, *, storage_options: dict | None = None) -> Manifest:
    """The manifest of `split` under the dataset root `url`.

    `url` may also be a brace pattern of shard files (`.../train-{000000..000099}.tar`): the manifest
    is read from the pattern's folder and restricted to the shards the pattern names."""
    root, pattern = _split_pattern(url)
    source = io.join_url(root, manifest_name(split))
    try:
        text = io.read_bytes(source, storage_options).decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"no manifest for split {split!r}: {source} does not exist "
            f"(shards are made with `maectl data shard SRC DEST`)"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"cannot read manifest {source}: {err}") from None
    manifest = Manifest.from_json(text, source=source)
    if manifest.split != split:
        raise ManifestError(f"{source} describes split {manifest.split!r}, not {split!r}")
    manifest.root = root
    if pattern is not None:
        manifest.shards = _select(manifest.shards, pattern, source)
    return manifest


def write_manifest(manifest: Manifest, root: str, *, storage_options: dict | None = None) -> str:
    target = io.join_url(root, manifest_name(manifest.split))
    io.write_bytes_atomic(target, manifest.to_json().encode("utf-8"), storage_options)
    return target


def _split_pattern(url: str) -> tuple[str, str | None]:
    if "{" not in url:
        return url, None
    root = io.parent_url(url)
    if "{" in root:
        raise ManifestError(f"{url}: a brace pattern may only name shard files, not folders")
    return root, url[len(root):].lstrip("/")


def _select(shards: list[ShardInfo], pattern: str, source: str) -> list[ShardInfo]:
    import braceexpand

    wanted = list(braceexpand.braceexpand(pattern))
    by_name = {s.name: s for s in shards}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ManifestError(f"shard {missing[0]} (from pattern {pattern!r}) is not listed in {source}")
    return [by_name[name] for name in wanted]
