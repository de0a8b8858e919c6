"""`maectl data ...`: shard an ImageNet-style folder, verify shards, build the demo set, benchmark.

Heavy libraries (torch, webdataset, s3fs) are imported inside the handlers so `maectl --help` stays fast."""

from __future__ import annotations

import argparse
import os
import re
from contextlib import contextmanager

from ..errors import UsageError

SPLITS = ("train", "val")


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="build, verify and benchmark WebDataset shards")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    shard = sub.add_parser("shard", help="convert an ImageNet-style folder (split/class/image) into WebDataset shards")
    shard.add_argument("src", help="local folder holding train/ and/or val/")
    shard.add_argument("dest", help="output folder, file:// or s3://bucket/prefix")
    shard.add_argument("--split", action="append", help="split folder to convert (repeatable; default: train and val, those present)")
    shard.add_argument("--maxcount", type=int, default=1000, help="images per shard (default 1000)")
    shard.add_argument("--maxsize", type=_parse_size, help="bytes per shard, e.g. 500MB (estimated from input sizes)")
    shard.add_argument("--resize", type=int, help="re-encode with this shorter side (e.g. 256); default: original bytes")
    shard.add_argument("--quality", type=int, default=95, help="JPEG quality when re-encoding (default 95)")
    shard.add_argument("--restart-columns", type=int, default=32, metavar="PX",
                       help="store JPEGs (losslessly) with a restart marker every PX pixels of a block row, so the "
                            "loader decodes only what a crop covers (default 32; 0: the JPEGs' own coding)")
    shard.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel shard writers")
    shard.add_argument("--seed", type=int, default=0, help="seed of the sample-to-shard shuffle")
    shard.add_argument("--val-labels", help="labels file for a flat val/ folder (file label, or one label per line)")
    shard.add_argument("--val-synsets", help="synset list giving integer val labels their class (line i = ID i)")
    _endpoint_option(shard)
    shard.set_defaults(handler=_shard)

    verify = sub.add_parser("verify", help="read every shard back and check it against its manifest")
    verify.add_argument("dest", help="dataset root (folder, file:// or s3://)")
    verify.add_argument("--split", action="append", help="split to check (default: every split with a manifest)")
    verify.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    _endpoint_option(verify)
    verify.set_defaults(handler=_verify)

    demo = sub.add_parser("demo", help="generate the synthetic demo dataset and shard it, ready to train")
    demo.add_argument("dest", help="folder (images in DEST/images, shards in DEST/shards) or s3:// prefix for the shards")
    demo.add_argument("--classes", type=int, default=10)
    demo.add_argument("--train-per-class", type=int, default=100)
    demo.add_argument("--val-per-class", type=int, default=20)
    demo.add_argument("--image-size", type=int, default=64)
    demo.add_argument("--maxcount", type=int, default=64, help="images per shard (small, so several workers have shards)")
    demo.add_argument("--seed", type=int, default=0)
    _endpoint_option(demo)
    demo.set_defaults(handler=_demo)

    bench = sub.add_parser("bench", help="images/s of the training input pipeline on existing shards")
    bench.add_argument("url", help="dataset root holding shards and manifests")
    bench.add_argument("--split", default="train")
    bench.add_argument("--mode", default="pretrain", choices=["pretrain", "finetune", "linprobe", "eval"])
    bench.add_argument("--img-size", type=int, default=224)
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--workers", default="0,2", help="comma-separated dataloader worker counts to measure")
    bench.add_argument("--batches", type=int, default=20, help="batches timed per setting")
    _endpoint_option(bench)
    bench.set_defaults(handler=_bench)


def _endpoint_option(parser) -> None:
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS environment / config)")


_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def _parse_size(text: str) -> int:
    """'500MB' -> 500_000_000, '1GiB' -> 2**30, '1e9' -> 10**9."""
    match = re.fullmatch(r"([0-9.]+(?:e[0-9]+)?)\s*([kmgt]i?)?b?", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 500MB or 1GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2) or ""])


def _storage(args) -> dict:
    return {"endpoint_url": args.endpoint_url} if args.endpoint_url else {}


@contextmanager
def _data_errors():
    """The data layer's errors are the user's to fix: one line, exit 2."""
    from mae_core.data import DataError

    try:
        yield
    except DataError as err:
        raise UsageError(str(err)) from None
    except FileNotFoundError as err:
        raise UsageError(f"{err.filename or err}: no such file or folder") from None
    except PermissionError as err:
        raise UsageError(f"{err.filename or err}: permission denied") from None


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)


def _shard(args) -> int:
    from rich.console import Console

    from mae_core.data.io import is_remote
    from mae_core.data.sources import scan_split
    from mae_core.data.writer import ShardOptions, plan_shards, write_split

    console = Console()
    if is_remote(args.src) or not os.path.isdir(args.src):
        raise UsageError(f"SRC {args.src}: not a local folder")
    splits = args.split or [s for s in SPLITS if os.path.isdir(os.path.join(args.src, s))]
    if not splits:
        raise UsageError(f"{args.src} holds neither train/ nor val/; name the split folders with --split")
    with _data_errors():
        options = ShardOptions(maxcount=args.maxcount, maxsize=args.maxsize, resize=args.resize, quality=args.quality,
                               restart_columns=args.restart_columns,
                               workers=max(1, args.workers), seed=args.seed, storage_options=_storage(args))
        classes = None
        for split in splits:
            labels = args.val_labels if split == "val" else None
            source = scan_split(args.src, split, classes=classes, labels_file=labels, synsets_file=args.val_synsets if labels else None)
            classes = classes or source.classes
            total = len(plan_shards(source.images, maxcount=options.maxcount, maxsize=options.maxsize, seed=options.seed))
            reused = 0
            with _progress() as progress:
                task = progress.add_task(f"{split}: {len(source.images)} images", total=total)

                def done(result, task=task):
                    nonlocal reused
                    reused += result.reused
                    progress.advance(task)

                manifest, problems = write_split(source, args.dest, options, on_shard=done)
            for problem in problems:
                console.print(f"[yellow]skipped[/] {problem}", highlight=False, soft_wrap=True)
            console.print(
                f"{split}: {manifest.num_samples} samples in {len(manifest.shards)} shards ({reused} already in place), "
                f"{len(manifest.classes)} classes, {len(problems)} inputs left out -> {args.dest.rstrip('/')}/{split}.manifest.json",
                highlight=False,
            )
    return 0


def _verify(args) -> int:
    from rich.console import Console

    from mae_core.data import read_manifest
    from mae_core.data.verify import find_splits, verify_split

    console = Console()
    with _data_errors():
        splits = args.split or find_splits(args.dest, _storage(args))
        if not splits:
            raise UsageError(f"no *.manifest.json under {args.dest}: nothing to verify")
        failed = False
        for split in splits:
            with _progress() as progress:
                shards = len(read_manifest(args.dest, split, storage_options=_storage(args)).shards)
                task = progress.add_task(f"verify {split}", total=shards)
                report = verify_split(args.dest, split, storage_options=_storage(args), workers=max(1, args.workers),
                                      on_shard=lambda _check, task=task: progress.advance(task))
            for check in report.shards:
                for line in check.problems + check.bad_samples:
                    console.print(f"[red]bad[/] {line}", highlight=False, soft_wrap=True)
            bad = sum(not c.ok for c in report.shards)
            segmented = "" if report.segmented is None else (
                f", {report.segmented} with restart segments for crop-window decoding"
                + (" (rewrite the shards with `maectl data shard` for the rest)" if report.segmented < report.samples else ""))
            console.print(f"{split}: {len(report.shards)} shards, {report.samples} samples, {bad} shards with problems{segmented}",
                          highlight=False)
            failed |= not report.ok
    return 1 if failed else 0


def _demo(args) -> int:
    import tempfile

    from rich.console import Console

    from mae_core.data.demo import build_demo_shards
    from mae_core.data.io import is_remote, join_url

    remote = is_remote(args.dest)
    shards = join_url(args.dest, "shards")
    with _data_errors(), tempfile.TemporaryDirectory() as scratch:
        images = os.path.join(scratch, "images") if remote else os.path.join(args.dest, "images")
        manifests = build_demo_shards(
            images, shards, num_classes=args.classes, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
            image_size=args.image_size, seed=args.seed, maxcount=args.maxcount, storage_options=_storage(args),
        )
    console = Console()
    for split, manifest in manifests.items():
        console.print(f"{split}: {manifest.num_samples} images of {args.image_size} px, {len(manifest.shards)} shards", highlight=False)
    if not remote:
        console.print(f"images: {images}", highlight=False)
    console.print(f"shards: {shards}  (use it as the job's data url)", highlight=False)
    return 0


def _bench(args) -> int:
    from bench.data import bench_loader

    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        raise UsageError(f"--workers {args.workers!r}: expected comma-separated integers such as 0,2") from None
    with _data_errors():
        bench_loader(args.url, split=args.split, mode=args.mode, img_size=args.img_size, batch_size=args.batch_size,
                     workers=workers, batches=args.batches, storage_options=_storage(args))
    return 0
