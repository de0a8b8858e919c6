"""Reading and writing whole files on local disk or any fsspec URL (s3://, gs://, memory://)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


@contextmanager
def open_for_read(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A seekable binary file for a local path or an fsspec URL."""
    if is_url(path):
        import fsspec  # only URL users pay for the import

        with fsspec.open(str(path), "rb") as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


@contextmanager
def open_for_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file whose contents appear at `path` only once the block succeeds.

    Locally: a temp file in the same folder, fsynced, then renamed over `path`, so a reader
    (or a job killed mid-write) never sees half a file. Object stores (s3://) replace an
    object whole on upload, which gives the same guarantee.
    """
    if is_url(path):
        import fsspec

        with fsspec.open(str(path), "wb") as f:
            yield f
        return
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
