"""Data pipeline benchmark: `python -m bench.data [--quick]`; `maectl data bench URL` for shards you have.

Measured side by side in one run, on the same JPEGs (generated here: photo-like, ~100 KB at
500 x 375 like an average ImageNet image, plus a set of larger 1024 x 768 photos):

1. Per core, decode + RandomResizedCrop(scale 0.2-1, bicubic) + flip to a uint8 tensor:
   torchvision's ImageFolder with those v2 transforms on the original JPEGs (and, to show the
   files are no easier for it, on the JPEGs as our shards store them: with restart markers, the
   same pixels), vs our path on the stored JPEGs (header-only crop choice, libjpeg-turbo decoding
   only the restart segments the crop covers, at reduced scale where the crop allows, torch's
   uint8 antialiased bicubic resize), vs our path on the original JPEGs (crop window, every
   entropy-coded byte above the crop's bottom decoded), vs whole-image decoding through
   simplejpeg and PIL with draft mode (the decoders before), for comparison.
2. The whole training input pipeline (decode, augment, normalise, batch of 64) in images/s with
   0 and N DataLoader workers: torchvision ImageFolder + DataLoader, vs our WebDataset loader
   reading local shards (with simplejpeg, and with PIL only) and reading the same shards from an
   S3 server (moto on 127.0.0.1, or $MAECTL_S3_ENDPOINT), through s3fs.

Per-core figures are images per CPU-second of the benchmark process (other load on a shared
machine does not count), the cases taking turns every 32 images (in an order rotated every turn).
Pipeline figures are wall-clock images/s after the first batch, the cases taking turns per round;
medians over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PIPELINE_BATCH = 64


@contextlib.contextmanager
def pil_decoding(enabled: bool = True):
    """Our loader with every image decoded by PIL (the decoder before simplejpeg). DataLoader
    workers started inside inherit the setting (fork)."""
    from mae_core.data import decode

    before = decode.use_simplejpeg
    decode.use_simplejpeg = not enabled and before
    try:
        yield
    finally:
        decode.use_simplejpeg = before


@contextlib.contextmanager
def whole_image_decoding(enabled: bool = True):
    """Our loader decoding whole images through simplejpeg, then cropping (the decoder before the
    crop-window one)."""
    from mae_core.data import decode

    before = decode.use_crop_decode
    decode.use_crop_decode = not enabled and before
    try:
        yield
    finally:
        decode.use_crop_decode = before


# -- inputs -------------------------------------------------------------------------------------
def photo_jpeg(width: int, height: int, rng: np.random.Generator, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth structure at several scales plus sensor-like noise, so it
    compresses like a natural image (~100 KB at 500 x 375, quality 90)."""
    from PIL import Image

    canvas = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((64, 0.5), (16, 0.25), (4, 0.15), (2, 0.1)):
        coarse = (rng.random((height // cell + 2, width // cell + 2, 3)) * 255).astype(np.uint8)
        canvas += weight * np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    canvas += rng.normal(0, 16, canvas.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()


def write_imagefolder(root: Path, count: int, size: tuple[int, int], num_classes: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / "train" / f"n{i % num_classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:05d}.JPEG").write_bytes(photo_jpeg(*size, rng))
    return root


def shard_jpeg_tree(root: Path) -> Path:
    """A copy of the ImageFolder tree at `root` with each JPEG as `maectl data shard` stores it
    (writer.encode_image: restart markers, the same pixels); made once, beside it."""
    from mae_core.data.writer import ShardOptions, encode_image

    stored = root.with_name(root.name + "-as-stored")
    if not stored.exists():
        columns = ShardOptions().restart_columns
        for path in sorted((root / "train").rglob("*.JPEG")):
            target = stored / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encode_image(str(path), None, 95, columns))
    return stored


# -- 1. per-core decode + crop + flip --------------------------------------------------------------
CHUNK = 32  # images per turn: the cases alternate this often


def per_core(root: Path, img_size: int, rounds: int) -> dict[str, list[float]]:
    """Images per CPU-second of each way, single-threaded, one figure per round. CPU time (not
    wall time) of this process, so other load on a shared machine does not count; the cases
    alternate every CHUNK images so cache and frequency effects hit them alike."""
    import torch
    import torchvision
    from torchvision.transforms import v2

    from mae_core.data import DataConfig
    from mae_core.data.transforms import SampleTransform

    torch.set_num_threads(1)
    baseline = torchvision.datasets.ImageFolder(str(root / "train"), transform=v2.Compose([
        v2.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(), v2.PILToTensor(),
    ]))
    paths = [path for path, _ in baseline.samples]
    # The same JPEGs as the shard writer stores them (restart markers, lossless), in a tree beside.
    stored = shard_jpeg_tree(root)
    stored_baseline = torchvision.datasets.ImageFolder(str(stored / "train"), transform=baseline.transform)
    stored_paths = [path for path, _ in stored_baseline.samples]
    ours = SampleTransform(DataConfig(url="-", img_size=img_size), "pretrain")

    def run_ours(files: list[str], indices: range, pil: bool = False, whole: bool = False) -> None:
        with pil_decoding(pil), whole_image_decoding(whole):
            for i in indices:
                with open(files[i], "rb") as f:
                    ours(f.read())

    from mae_core.data import decode

    crop = "crop window" if decode._jpegcrop is not None else "NO crop-window decoder built"
    cases = {
        "torchvision ImageFolder": lambda indices: [baseline[i] for i in indices],
        "same torchvision path, shard JPEGs": lambda indices: [stored_baseline[i] for i in indices],
        f"ours: shard JPEGs, {crop} (restart segments)": lambda indices: run_ours(stored_paths, indices),
        f"ours: original JPEGs, {crop}": lambda indices: run_ours(paths, indices),
        "ours: whole image (simplejpeg)": lambda indices: run_ours(stored_paths, indices, whole=True),
        "ours: PIL decoding + draft": lambda indices: run_ours(stored_paths, indices, pil=True),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        seconds = dict.fromkeys(cases, 0.0)
        for turn, first in enumerate(range(0, len(paths), CHUNK)):
            indices = range(first, min(first + CHUNK, len(paths)))
            for name, case in _rotated(cases, turn):
                start = time.process_time()
                case(indices)
                seconds[name] += time.process_time() - start
        for name, spent in seconds.items():
            rates[name].append(len(paths) / spent)
    return rates


# -- 2. whole pipeline ---------------------------------------------------------------------------------
def torchvision_loader(root: Path, img_size: int, workers: int):
    import torch
    import torchvision
    from torchvision.transforms import v2

    from mae_core.data.config import IMAGENET_MEAN, IMAGENET_STD

    dataset = torchvision.datasets.ImageFolder(str(root / "train"), transform=v2.Compose([
        v2.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]))
    return torch.utils.data.DataLoader(dataset, batch_size=PIPELINE_BATCH, shuffle=True, drop_last=True, num_workers=workers)


def our_loader(url: str, img_size: int, workers: int, storage_options: dict | None = None, mode: str = "pretrain",
               split: str = "train", batch_size: int = PIPELINE_BATCH):
    from mae_core.data import DataConfig, build_loader

    endpoint = (storage_options or {}).get("endpoint_url")
    cfg = DataConfig(url=url, img_size=img_size, batch_size=batch_size, num_workers=workers, s3_endpoint_url=endpoint)
    return build_loader(cfg, split=split, mode=mode, rank=0, world_size=1, epoch=0, seed=0)


def steady_rate(loader, max_batches: int | None = None) -> float:
    """images/s from the first batch's arrival to the last: the rate an epoch runs at once the
    workers are up (their start-up, once per epoch, is reported by `first_batch_seconds`)."""
    images, start = 0, None
    for i, (batch, _) in enumerate(loader):
        if start is None:
            start = time.perf_counter()
        else:
            images += batch.shape[0]
        if max_batches is not None and i + 1 >= max_batches:
            break
    return images / (time.perf_counter() - start) if images else float("nan")


def pipeline(root: Path, shards: str, s3_url: str | None, s3_options: dict, img_size: int, workers: list[int], rounds: int) -> dict:
    results = {}
    for n in workers:
        cases = {
            f"torchvision ImageFolder, {n} workers": lambda n=n: steady_rate(torchvision_loader(root, img_size, n)),
            f"ours, local shards, {n} workers": lambda n=n: steady_rate(our_loader(shards, img_size, n)),
            f"ours with PIL decoding, local shards, {n} workers": lambda n=n: _with_pil(lambda: steady_rate(our_loader(shards, img_size, n))),
        }
        if s3_url:
            cases[f"ours, S3 shards, {n} workers"] = lambda n=n: steady_rate(our_loader(s3_url, img_size, n, s3_options))
        results.update(_rounds(cases, rounds))
    return results


def _rotated(cases: dict, turn: int) -> list:
    """The cases in an order rotated by one every turn: none always runs right after another (the
    case after torchvision's PIL path meets caches it has churned)."""
    items = list(cases.items())
    shift = turn % len(items)
    return items[shift:] + items[:shift]


def _with_pil(run):
    with pil_decoding():
        return run()


def _rounds(cases: dict, rounds: int) -> dict[str, float]:
    """Run each case (returning images/s) once per round, in turn; medians."""
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for turn in range(rounds):
        for name, case in _rotated(cases, turn):
            rates[name].append(case())
    return {name: statistics.median(values) for name, values in rates.items()}


# -- S3 server -------------------------------------------------------------------------------------------
class S3ForBench:
    """$MAECTL_S3_ENDPOINT when set, else a moto server of our own for the duration."""

    def __enter__(self) -> str:
        self.process = None
        for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(name, value)
        endpoint = os.environ.get("MAECTL_S3_ENDPOINT")
        if endpoint:
            return endpoint.rstrip("/")
        import socket
        import urllib.error
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        script = Path(sys.executable).with_name("moto_server")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
        self.process = subprocess.Popen(command + ["-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/", timeout=1).close()
                return url
            except urllib.error.HTTPError:
                return url
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not answer at {url}")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


# -- reporting -------------------------------------------------------------------------------------------
def print_table(title: str, rates: dict[str, float], baseline_prefix: str = "torchvision", unit: str = "img/s",
                spread: dict[str, list[float]] | None = None, best: dict[str, float] | None = None) -> None:
    """One line a case: its rate and ratio to the baseline; with `best`, also the best round's
    rate (the minimum time) and its ratio; with `spread`, the range of the per-round ratios."""
    print(f"\n{title}  [load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}]")
    baselines = {name.split(", ")[-1]: rate for name, rate in rates.items() if name.startswith(baseline_prefix)}
    best_baseline = next((value for name, value in (best or {}).items() if name.startswith(baseline_prefix)), None)
    for name, rate in rates.items():
        reference = baselines.get(name.split(", ")[-1]) or next(iter(baselines.values()), None)
        ratio = f"{rate / reference:5.2f}x" if reference else ""
        if best is not None:
            ratio += f"   best {best[name]:8.1f} {best[name] / best_baseline:5.2f}x" if best_baseline else ""
        ratios = (spread or {}).get(name)
        if ratios and not name.startswith(baseline_prefix):
            ratio += f" [{min(ratios):.2f}-{max(ratios):.2f}]"
        print(f"  {name:<56} {rate:8.1f} {unit:<10} {ratio}", flush=True)


def bench_loader(url: str, *, split: str, mode: str, img_size: int, batch_size: int, workers: list[int], batches: int,
                 storage_options: dict | None = None) -> dict[str, float]:
    """`maectl data bench URL`: images/s of our loader on existing shards, per worker count."""
    rates = {}
    for n in workers:
        loader = our_loader(url, img_size, n, storage_options, mode=mode, split=split, batch_size=batch_size)
        start = time.perf_counter()
        rates[f"{n} workers"] = steady_rate(loader, batches)
        print(f"{url} {split} {mode} at {img_size} px: {n} workers: {rates[f'{n} workers']:.1f} img/s "
              f"(after the first batch; {time.perf_counter() - start:.1f} s in all)")
    return rates


def run_per_core(typical: Path, large: Path, rounds: int) -> None:
    for folder, size, label in ((typical, 224, "500x375 -> 224"), (typical, 112, "500x375 -> 112"), (large, 224, "1024x768 -> 224")):
        rates = per_core(folder, size, rounds)
        print_table(f"decode + RandomResizedCrop + flip, images per CPU-second, {label} (median of {rounds} rounds and "
                    "its ratio to torchvision; best round and its ratio; [range of the per-round ratios])",
                    {name: statistics.median(values) for name, values in rates.items()}, unit="img/cpu-s",
                    spread={name: [r / b for r, b in zip(values, rates["torchvision ImageFolder"])] for name, values in rates.items()},
                    best={name: max(values) for name, values in rates.items()})


def run_pipeline(scratch: Path, typical: Path, endpoint: str, workers: list[int], count: int, rounds: int) -> None:
    import s3fs
    import torch

    from mae_core.data.sources import scan_split
    from mae_core.data.writer import ShardOptions, write_split

    options = {"endpoint_url": endpoint}
    source = scan_split(str(typical), "train")
    maxcount = max(count // 8, 1)
    write_split(source, str(scratch / "shards"), ShardOptions(maxcount=maxcount))
    s3 = s3fs.S3FileSystem(endpoint_url=endpoint)
    bucket = f"maectl-bench-{os.getpid()}"
    s3.mkdir(bucket)
    try:
        s3_url = f"s3://{bucket}/typical"
        write_split(source, s3_url, ShardOptions(maxcount=maxcount, storage_options=options))
        torch.set_num_threads(1)  # the main process only batches; workers are the measured resource
        rates = pipeline(typical, str(scratch / "shards"), s3_url, options, 224, workers, rounds)
        print_table(f"whole pipeline to normalised batches of {PIPELINE_BATCH} at 224, 500x375 inputs, after the first batch", rates)
    finally:
        s3.rm(bucket, recursive=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (a smoke run)")
    parser.add_argument("--images", type=int, default=512, help="images per set")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default=f"0,{min(os.cpu_count() or 1, 8)}", help="DataLoader worker counts")
    parser.add_argument("--parts", default="per-core,pipeline", help="comma-separated: per-core, pipeline")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the moto server is stopped
    count, rounds = (256, 1) if args.quick else (args.images, args.rounds)
    workers = [int(w) for w in args.workers.split(",")]
    parts = set(args.parts.split(","))

    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {count} images per set, {rounds} rounds")
    with tempfile.TemporaryDirectory() as scratch, S3ForBench() as endpoint:
        scratch = Path(scratch)
        typical = write_imagefolder(scratch / "typical", count, (500, 375))
        large = write_imagefolder(scratch / "large", count // 2, (1024, 768), seed=1)
        mean_kb = statistics.mean(p.stat().st_size for p in (typical / "train").rglob("*.JPEG")) / 1e3
        stored_kb = statistics.mean(p.stat().st_size for p in (shard_jpeg_tree(typical) / "train").rglob("*.JPEG")) / 1e3
        print(f"inputs: {count} JPEGs of 500 x 375 (mean {mean_kb:.1f} KB; {stored_kb:.1f} KB as shards store them), "
              f"{count // 2} of 1024 x 768")
        if "per-core" in parts:
            run_per_core(typical, large, rounds)
        if "pipeline" in parts:
            run_pipeline(scratch, typical, endpoint, workers, count, rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
