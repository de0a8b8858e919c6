"""Which samples each rank and dataloader worker reads in an epoch, and how many batches that makes.

The choice (documented in docs/data.md): an exact split, equalised.
- Every (rank, worker) pair is a *stream*. When training, the shard order is shuffled per epoch
  (seeded); the split's samples, in that order, are cut into world_size x streams_per_rank
  contiguous runs of equal size (differing by at most one sample), so a shard may be shared by two
  neighbouring streams, each reading its own part of it (the later one reads past the first part
  without decoding it). Nothing is dropped for shard-size imbalance.
- Batches never cross streams. The DataLoader takes one batch from each worker in turn, so batch g
  of a rank comes from its stream g % S. Training: a rank yields exactly `num_batches` batches, the
  largest count every stream of every rank can fill with full batches (computed from manifest
  counts, so all ranks agree without talking); the few samples left over (< one batch per stream)
  are dropped that epoch. Each sample is seen at most once per epoch.
- Training needs at least one shard per stream (else too much of each shard is read only to be
  skipped): fewer is an error before any worker starts, naming the counts.
- Eval: manifest order, no shuffle, partial last batches kept, every sample exactly once across
  all ranks; a rank short of the longest rank's batch count pads with label -1 batches.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .manifest import Manifest, ShardInfo

# Distinct streams of randomness derived from the same (seed, epoch, ...).
SHARD_ORDER, SAMPLE_BUFFER, AUGMENT, LOADER = 1, 2, 3, 4


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (a stable hash, unlike Python's `hash`)."""
    if any(p < 0 for p in parts):
        raise ValueError(f"seeds, epochs, ranks and indices must be >= 0, got {parts}")
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def shard_order(shards: list[ShardInfo], *, seed: int, epoch: int, shuffle: bool) -> list[ShardInfo]:
    ordered = list(shards)
    if shuffle:
        random.Random(derive_seed(seed, epoch, SHARD_ORDER)).shuffle(ordered)
    return ordered


@dataclass(frozen=True)
class Segment:
    """Samples [start, stop) of a shard, in the shard's own order."""

    shard: ShardInfo
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def split_evenly(shards: list[ShardInfo], num_streams: int) -> list[list[Segment]]:
    """Cut the samples of `shards` (in this order) into `num_streams` contiguous runs whose sizes
    differ by at most one."""
    total = sum(s.count for s in shards)
    bounds = [total * i // num_streams for i in range(num_streams + 1)]
    streams: list[list[Segment]] = [[] for _ in range(num_streams)]
    stream = position = 0
    for shard in shards:
        taken = 0
        while taken < shard.count:
            room = bounds[stream + 1] - position
            if room == 0:
                stream += 1
                continue
            take = min(room, shard.count - taken)
            streams[stream].append(Segment(shard, taken, taken + take))
            taken += take
            position += take
    return streams


@dataclass(frozen=True)
class EpochPlan:
    streams: list[list[Segment]]  # stream rank * streams_per_rank + s
    streams_per_rank: int
    batch_size: int
    num_batches: int  # per rank, the same on every rank
    training: bool

    def stream(self, rank: int, index: int) -> list[Segment]:
        return self.streams[rank * self.streams_per_rank + index]

    def stream_batches(self, rank: int, index: int) -> int:
        """How many batches stream `index` of `rank` contributes this epoch."""
        if self.training:
            # Batch g comes from stream g % S: count the g < num_batches with that remainder.
            return max(0, math.ceil((self.num_batches - index) / self.streams_per_rank))
        return math.ceil(sum(s.count for s in self.stream(rank, index)) / self.batch_size)

    def used_samples(self, world_size: int) -> int:
        if not self.training:
            return sum(s.count for stream in self.streams for s in stream)
        return self.num_batches * self.batch_size * world_size


def plan_epoch(
    manifest: Manifest, *, training: bool, batch_size: int, world_size: int, streams_per_rank: int, seed: int, epoch: int
) -> EpochPlan:
    if manifest.num_samples == 0:
        raise DataError(f"split {manifest.split!r} at {manifest.root} has no samples (manifest lists {len(manifest.shards)} shards)")
    num_streams = world_size * streams_per_rank
    shards = sum(1 for s in manifest.shards if s.count)
    if training and shards < num_streams:
        raise DataError(
            f"split {manifest.split!r} has {shards} shards, but {world_size} ranks x "
            f"{streams_per_rank} loader workers need at least {num_streams} (one per worker): use at most "
            f"{max(shards // world_size, 1)} workers per rank, or reshard with a smaller --maxcount"
        )
    ordered = shard_order(manifest.shards, seed=seed, epoch=epoch, shuffle=training)
    streams = split_evenly(ordered, num_streams)
    samples = [sum(s.count for s in stream) for stream in streams]
    if training:
        # Stream s of a rank can serve batches s, s + S, ..., s + (k - 1) S where k is its full batches.
        num_batches = min(
            (i % streams_per_rank) + streams_per_rank * (n // batch_size) for i, n in enumerate(samples)
        )
        if num_batches == 0:
            raise DataError(
                f"split {manifest.split!r}: the smallest of {num_streams} worker streams holds {min(samples)} samples, "
                f"fewer than one batch of {batch_size}; lower batch_size or num_workers"
            )
    else:
        num_batches = max(
            sum(math.ceil(n / batch_size) for n in samples[r * streams_per_rank:(r + 1) * streams_per_rank])
            for r in range(world_size)
        )
    return EpochPlan(streams, streams_per_rank, batch_size, num_batches, training)
