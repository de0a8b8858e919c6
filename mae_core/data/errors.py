"""Errors the data layer raises for problems in the user's data or settings.

They carry a message that names the file, shard, key or count at fault; the CLI turns them into a
one-line error, the training engine lets them stop the run before its first step."""

from __future__ import annotations


class DataError(Exception):
    """The dataset (files, manifest, shards) or its settings cannot be used as asked."""


class ManifestError(DataError):
    """A split's manifest is missing, unreadable, or disagrees with the shards."""


class ShardReadError(DataError, OSError):
    """A shard could not be read at all, even after retries."""
