"""`build_loader`: per-rank, per-epoch batches from a split's shards, deterministic and resumable.

Data order and augmentation depend only on (seed, epoch, rank, world_size, num_workers, config):
two loaders built alike yield bit-identical batches. `start_batch=k` yields batches k, k+1, ...
of the same epoch; the samples of the skipped batches are read from the tar but never decoded.
See plan.py for how shards are split across ranks and workers, and docs/data.md.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
from contextlib import contextmanager
from typing import Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .config import DataConfig
from .errors import DataError
from .io import register_webdataset_s3
from .manifest import Manifest, read_manifest
from .plan import AUGMENT, LOADER, SAMPLE_BUFFER, EpochPlan, derive_seed, plan_epoch
from .reader import UNREADABLE, image_bytes, iter_shard, parse_label
from .transforms import TRAINING_MODES, BatchTransform, SampleTransform, check_mode

log = logging.getLogger(__name__)

# Skipped batches (resume) kept undecoded in case a batch needs their samples (see _donors).
DONOR_CANDIDATES = 2
IGNORE_LABEL = -1  # eval padding and eval's unreadable samples: not a class, leave out of metrics
# Samples the shuffle buffer collects before it starts yielding (webdataset's default warm-up).
SHUFFLE_INITIAL = 100


def build_loader(
    cfg: DataConfig, *, split: str, mode: str, rank: int, world_size: int, epoch: int, seed: int, start_batch: int = 0
) -> "ShardLoader":
    """The batches of one epoch for one rank. Raises DataError (before any worker starts) when the
    split is missing, empty or has too few shards for world_size x num_workers."""
    check_mode(mode)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if epoch < 0 or seed < 0:
        raise ValueError(f"epoch and seed must be >= 0, got epoch={epoch}, seed={seed}")
    manifest = read_manifest(cfg.url, split, storage_options=cfg.storage_options)
    plan = plan_epoch(
        manifest, training=mode in TRAINING_MODES, batch_size=cfg.batch_size, world_size=world_size,
        streams_per_rank=max(1, cfg.num_workers), seed=seed, epoch=epoch,
    )
    if not 0 <= start_batch <= plan.num_batches:
        raise ValueError(f"start_batch must be in [0, {plan.num_batches}] for this epoch, got {start_batch}")
    dropped = manifest.num_samples - plan.used_samples(world_size)
    if plan.training and dropped > 0.1 * manifest.num_samples:
        log.warning("split %r: equal batches per rank leave %d of %d samples out this epoch", split, dropped, manifest.num_samples)
    return ShardLoader(cfg, manifest, plan, mode=mode, rank=rank, epoch=epoch, seed=seed, start_batch=start_batch)


class ShardLoader:
    """Iterate once per epoch: `for images, labels in loader`. images float32 (B, 3, S, S)
    normalised, labels int64 (B,). `len()` is the epoch's batch count, equal on every rank."""

    def __init__(self, cfg: DataConfig, manifest: Manifest, plan: EpochPlan, *, mode: str, rank: int, epoch: int, seed: int, start_batch: int):
        self.cfg, self.manifest, self.plan = cfg, manifest, plan
        self.mode, self.rank, self.epoch, self.seed = mode, rank, epoch, seed
        self.start_batch = start_batch
        self.batches_consumed = start_batch
        self.skipped = 0  # unreadable samples met so far this epoch, over all workers

    def __len__(self) -> int:
        return self.plan.num_batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.batches_consumed, self.skipped = self.start_batch, 0
        batches = self._worker_batches()
        if not self.plan.training:
            # Eval streams have uneven batch counts, so the round-robin trick of training does not
            # apply; resuming eval mid-way simply reads and drops the first batches.
            batches = itertools.islice(batches, self.start_batch, None)
        for images, labels, skipped in batches:
            self.skipped += skipped
            self.batches_consumed += 1
            yield images, labels
        while self.batches_consumed < len(self):  # eval: ranks with fewer samples pad to equal length
            self.batches_consumed += 1
            yield self._padding_batch()

    def _worker_batches(self):
        workers = self.cfg.num_workers
        dataset = _RankStreams(self.cfg, self.manifest, self.plan, mode=self.mode, rank=self.rank, epoch=self.epoch, seed=self.seed,
                               start_batch=self.start_batch if self.plan.training else 0)
        # An explicit generator: DataLoader would otherwise draw its base seed from the global RNG,
        # shifting the training loop's random stream every epoch.
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, self.rank, LOADER))
        return iter(DataLoader(
            dataset, batch_size=None, num_workers=workers, pin_memory=self.cfg.pin_memory, generator=generator,
            prefetch_factor=self.cfg.prefetch_factor if workers > 0 else None,
        ))

    def _padding_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.cfg.img_size
        return torch.zeros(self.plan.batch_size, 3, size, size), torch.full((self.plan.batch_size,), IGNORE_LABEL, dtype=torch.int64)


class _RankStreams(IterableDataset):
    """One rank's streams; each DataLoader worker (or the main process) runs one of them.

    Training: the DataLoader returns one batch per worker in turn, so worker w yields the rank's
    batches start_batch + w, start_batch + w + S, ...: that is stream (start_batch + w) % S, from
    its local batch (start_batch + w) // S. Output order is then independent of start_batch."""

    def __init__(self, cfg: DataConfig, manifest: Manifest, plan: EpochPlan, *, mode: str, rank: int, epoch: int, seed: int, start_batch: int):
        self.cfg, self.manifest, self.plan = cfg, manifest, plan
        self.mode, self.rank, self.epoch, self.seed, self.start_batch = mode, rank, epoch, seed, start_batch

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        per_rank = self.plan.streams_per_rank
        stream = (self.start_batch + worker) % per_rank
        first = (self.start_batch + worker) // per_rank
        return _StreamReader(self, stream).batches(first)


@contextmanager
def _single_threaded():
    """Per-image ops on small tensors run faster on one thread than split across the intra-op
    pool (which also contends with the training step's threads). DataLoader workers are already
    single-threaded; this covers num_workers == 0, restoring the caller's setting after."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _StreamReader:
    def __init__(self, owner: _RankStreams, stream: int):
        self.cfg, self.plan, self.manifest = owner.cfg, owner.plan, owner.manifest
        self.epoch, self.seed = owner.epoch, owner.seed
        self.training = owner.plan.training
        self.stream_id = owner.rank * owner.plan.streams_per_rank + stream
        self.segments = owner.plan.stream(owner.rank, stream)
        self.quota = owner.plan.stream_batches(owner.rank, stream)
        self.sample_transform = SampleTransform(owner.cfg, owner.mode)
        self.batch_transform = BatchTransform(owner.cfg, owner.mode)
        # The donors of a batch that has no readable sample at all (see _fill): the readable
        # samples of the latest batch that had any. After a resume, until a batch has been
        # decoded: the last skipped batches with real samples, (group, index), decoded if needed.
        self._donor_good: list | None = None
        self._skipped_real: collections.deque = collections.deque(maxlen=DONOR_CANDIDATES)

    def batches(self, first: int):
        groups = wds.batched(self.plan.batch_size, collation_fn=None, partial=not self.training)(self._samples())
        produced = 0
        for index, group in enumerate(itertools.islice(groups, self.quota)):
            produced += 1
            if index >= first:  # earlier batches are dropped undecoded (resume)
                yield self._make_batch(group, index)
            elif _has_real_samples(group):  # decoded only if a batch needs donors
                self._skipped_real.append((group, index))
        if self.training and produced < self.quota:
            names = ", ".join(part.shard.name for part in self.segments)
            raise DataError(
                f"shards {names} yielded fewer samples than {self.manifest.root}/{self.manifest.split}.manifest.json "
                f"lists ({produced} of {self.quota} batches); run `maectl data verify {self.manifest.root}`"
            )

    def _samples(self):
        samples = itertools.chain.from_iterable(
            # A shard still unreadable after the retries (truncated, gone) yields stand-ins for the
            # samples it could not deliver: they are skipped and counted like corrupt images, and
            # the batch plan (equal batches on every rank) holds.
            iter_shard(self.manifest.shard_url(part.shard), expected=part.shard.count, start=part.start, stop=part.stop,
                       storage_options=self.cfg.storage_options, retries=self.cfg.shard_retries, delay_s=self.cfg.retry_delay_s,
                       skip_unreadable=True)
            for part in self.segments
        )
        if self.training and self.cfg.shuffle_buffer > 1:
            rng = random.Random(derive_seed(self.seed, self.epoch, self.stream_id, SAMPLE_BUFFER))
            samples = wds.shuffle(self.cfg.shuffle_buffer, min(SHUFFLE_INITIAL, self.cfg.shuffle_buffer), rng=rng)(samples)
        return samples

    def _make_batch(self, group: list[dict], index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        # Seeded per batch, so a resumed stream augments batch k exactly as the first run did;
        # fork_rng keeps the training loop's own generator untouched when num_workers == 0.
        with torch.random.fork_rng(devices=[]), _single_threaded():
            decoded = self._decode_group(group, index)
            good = [d for d in decoded if d is not None]
            skipped = len(decoded) - len(good)
            if skipped:
                decoded = self._fill(decoded, group)
            if good:
                self._donor_good = good
                self._skipped_real.clear()
            images = self.batch_transform(torch.stack([image for image, _ in decoded]))
        labels = torch.tensor([label for _, label in decoded], dtype=torch.int64)
        return images, labels, skipped

    def _decode_group(self, group: list[dict], index: int) -> list:
        torch.manual_seed(derive_seed(self.seed, self.epoch, self.stream_id, index, AUGMENT))
        return [self._decode(sample) for sample in group]

    def _decode(self, sample: dict) -> tuple[torch.Tensor, int] | None:
        if UNREADABLE in sample:  # a stand-in for a sample of an unreadable shard (logged by the reader)
            return None
        try:
            label = parse_label(sample, self.manifest.num_classes)
            return self.sample_transform(image_bytes(sample)), label
        except Exception as err:  # any decoder failure is one bad sample, not a dead epoch
            log.warning("skipping sample %s in %s: %s", sample.get("__key__"), sample.get("__url__"), err)
            return None

    def _fill(self, decoded: list, group: list[dict]) -> list:
        """Training: each unreadable slot takes the next good sample of the batch, so batch sizes
        and batch boundaries stay as planned (resume stays exact). A batch with no readable sample
        (the rest of a truncated shard, unshuffled) takes those of the latest batch that had real
        samples; when that has none readable either, the data is too damaged to go on. Eval: a
        blank, label -1."""
        if not self.training:
            blank = (torch.zeros(3, self.cfg.img_size, self.cfg.img_size, dtype=torch.uint8), IGNORE_LABEL)
            return [d if d is not None else blank for d in decoded]
        good_slots = [i for i, d in enumerate(decoded) if d is not None]
        if not good_slots:
            donors = self._donors()
            if not donors:
                keys = ", ".join(str(s.get("__key__")) for s in group[:5])
                raise DataError(f"every sample of a batch and of the batch before it is unreadable (keys {keys}, ... in "
                                f"{group[0].get('__url__')}); run `maectl data verify`")
            return [donors[i % len(donors)] for i in range(len(decoded))]
        n = len(decoded)
        return [d if d is not None else decoded[min(good_slots, key=lambda j: (j - i) % n)] for i, d in enumerate(decoded)]

    def _donors(self) -> list:
        """The readable samples of the latest earlier batch that had any. After a resume, the
        skipped batches with real samples are decoded (each with its own augmentation seed), latest
        first, until one has: the same samples as in the first run, unless more than
        DONOR_CANDIDATES such batches in a row were unreadable (then this raises where the first
        run borrowed from further back). A truncated member is one such batch."""
        with torch.random.fork_rng(devices=[]):  # the current batch's random stream goes on untouched
            while not self._donor_good and self._skipped_real:
                self._donor_good = [d for d in self._decode_group(*self._skipped_real.pop()) if d is not None]
        return self._donor_good or []


def _has_real_samples(group: list[dict]) -> bool:
    return any(UNREADABLE not in sample for sample in group)


# Users of wds.WebDataset beside our loader get s3:// URLs too (webdataset 1.0.2 has no handler).
register_webdataset_s3()
