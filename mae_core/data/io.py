"""Opening dataset URLs: local paths and `file://` directly, anything else (`s3://`) through fsspec.

Endpoint, region and credentials for S3 come from the usual AWS environment variables and config
files (s3fs reads them); `storage_options={"endpoint_url": ...}` points at an S3-compatible server.
"""

from __future__ import annotations

import os
import posixpath
import sys
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator
from urllib.parse import urlparse

# Shards are read front to back; large blocks keep S3 round trips few.
REMOTE_READ_BLOCK = 16 * 1024 * 1024
# How long the S3 client waits on a server that stops answering, before the shard reader's own
# retries (reader.iter_shard: re-open the shard, pauses doubling from DataConfig.retry_delay_s)
# take over. A request waits up to read_timeout for a reply; s3fs makes S3_CLIENT_ATTEMPTS of it
# (botocore's own retries are off, so the layers do not multiply). With the defaults (3 re-reads
# from 1 s) a shard waits out a silent server for ~3.5 min (4 x 2 x 25 s + 7 s) before its samples
# are given up (skipped and counted); a 60 s stall costs ~60 s and loses nothing
# (docs/reliability.md). Explicit storage_options override these.
S3_CLIENT_ATTEMPTS = 2
S3_CLIENT_CONFIG = {"connect_timeout": 10, "read_timeout": 25, "retries": {"total_max_attempts": 1}}


def is_remote(url: str) -> bool:
    return urlparse(url).scheme not in ("", "file")


def local_path(url: str) -> str:
    """The filesystem path of a local path or `file://` URL."""
    return urlparse(url).path if url.startswith("file://") else url


def join_url(root: str, name: str) -> str:
    if is_remote(root):
        return root.rstrip("/") + "/" + name
    return os.path.join(local_path(root), name)


def parent_url(url: str) -> str:
    if is_remote(url):
        return posixpath.dirname(url.rstrip("/"))
    return os.path.dirname(local_path(url))


def filesystem(url: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) for a remote URL."""
    import fsspec.core

    options = dict(storage_options or {})
    if urlparse(url).scheme not in ("s3", "s3a"):
        return fsspec.core.url_to_fs(url, **options)
    # Copies: botocore rewrites the retries dict it is given.
    defaults = {key: dict(value) if isinstance(value, dict) else value for key, value in S3_CLIENT_CONFIG.items()}
    options["config_kwargs"] = {**defaults, **options.get("config_kwargs", {})}
    fs, path = fsspec.core.url_to_fs(url, **options)
    fs.retries = S3_CLIENT_ATTEMPTS  # a class attribute of s3fs's, not a constructor option
    return fs, path


@contextmanager
def open_read(url: str, storage_options: dict | None = None) -> Iterator[IO[bytes]]:
    if not is_remote(url):
        with open(local_path(url), "rb", buffering=1024 * 1024) as f:
            yield f
        return
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb", block_size=REMOTE_READ_BLOCK, cache_type="readahead") as f:
        yield f


def read_bytes(url: str, storage_options: dict | None = None) -> bytes:
    with open_read(url, storage_options) as f:
        return f.read()


def exists(url: str, storage_options: dict | None = None) -> bool:
    if not is_remote(url):
        return os.path.exists(local_path(url))
    fs, path = filesystem(url, storage_options)
    return fs.exists(path)


def publish_file(tmp_path: str, url: str, storage_options: dict | None = None) -> None:
    """Move a finished local file to `url` in one step, so no reader ever sees half of it.

    Local: a rename within the destination folder. S3: one upload (an object appears only when
    its upload completes), then the local file is removed."""
    if not is_remote(url):
        os.replace(tmp_path, local_path(url))
        return
    fs, path = filesystem(url, storage_options)
    fs.put_file(tmp_path, path)
    os.remove(tmp_path)


def staging_file(url: str, suffix: str = ".partial") -> tuple[int, str]:
    """A temporary file to write `url`'s content into before `publish_file`.

    Local targets stage beside the target (same filesystem, so the rename is atomic); remote
    targets stage in the system temp folder."""
    if is_remote(url):
        return tempfile.mkstemp(suffix=suffix)
    target = local_path(url)
    directory, name = os.path.split(target)
    os.makedirs(directory or ".", exist_ok=True)
    return tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory or ".")


def write_bytes_atomic(url: str, data: bytes, storage_options: dict | None = None) -> None:
    fd, tmp = staging_file(url)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish_file(tmp, url, storage_options)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def make_dirs(url: str, storage_options: dict | None = None) -> None:
    if not is_remote(url):
        os.makedirs(local_path(url), exist_ok=True)
        return
    fs, path = filesystem(url, storage_options)
    bucket = path.split("/", 1)[0]
    if not fs.exists(bucket):
        fs.mkdir(bucket)


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    fs, path = filesystem(url)
    if mode == "rb":
        return fs.open(path, mode, block_size=REMOTE_READ_BLOCK, cache_type="readahead")
    return fs.open(path, mode)


def register_webdataset_s3() -> None:
    """Teach webdataset's `gopen` the `s3://` scheme (1.0.2 has no handler for it).

    The table lives in the module `webdataset.gopen`, which the package shadows with the function
    of the same name, hence the lookup through sys.modules. Configuration: AWS environment."""
    import webdataset  # noqa: F401  (loads webdataset.gopen)

    schemes = sys.modules["webdataset.gopen"].gopen_schemes
    schemes.setdefault("s3", _gopen_fsspec)
