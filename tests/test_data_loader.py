"""The training input pipeline on real shards in tmp_path: determinism, resume, equal batches per
rank, eval coverage, corrupt samples, unreadable shards, clear errors, transforms."""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mae_core.data import IGNORE_LABEL, DataConfig, DataError, ManifestError, ShardReadError, build_loader, read_manifest
from mae_core.data.manifest import Manifest, ShardInfo, shard_name, write_manifest
from mae_core.data.plan import split_evenly

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: extra intra-op threads only contend on the shared 2-core machines.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- indexed datasets: sample i is a flat colour that encodes i, so batches can be read back ---

def index_colour(i: int) -> tuple[int, int, int]:
    return (8 + 4 * (i % 60), 8 + 4 * (i // 60), 128)


def decode_indices(images: torch.Tensor) -> list[int]:
    """Read the indices back from normalised flat-colour images (B, 3, S, S)."""
    rgb = (images.mean(dim=(2, 3)) * STD + MEAN) * 255
    return [int(round((r - 8) / 4)) + 60 * int(round((g - 8) / 4)) for r, g, _ in rgb.tolist()]


def jpeg(colour, size: int = 24) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, "JPEG", quality=95)
    return out.getvalue()


def write_indexed_split(root, split: str, counts: list[int], *, num_classes: int = 4, broken: dict | None = None) -> Manifest:
    """Shards holding counts[k] samples each; sample i has label i % num_classes. `broken` maps a
    sample index to a replacement dict of its members (e.g. {"jpg": b"junk"} or {"jpg": ...} without cls)."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    shards, index = [], 0
    for k, count in enumerate(counts):
        path = root / shard_name(split, k)
        with open(path, "wb") as f, wds.TarWriter(f, mtime=0) as tar:
            for _ in range(count):
                sample = {"jpg": jpeg(index_colour(index)), "cls": index % num_classes}
                sample = dict((broken or {}).get(index, sample))
                tar.write({"__key__": f"s{index:05d}", **sample})
                index += 1
        data = path.read_bytes()
        shards.append(ShardInfo(path.name, count, len(data), hashlib.sha256(data).hexdigest()))
    manifest = Manifest(split=split, classes=[f"c{i}" for i in range(num_classes)], shards=shards)
    write_manifest(manifest, str(root))
    return manifest


def collect(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), labels.clone()) for images, labels in loader]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def demo_cfg(url: str, **kw) -> DataConfig:
    return DataConfig(**{"url": url, "img_size": 32, "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64, **kw})


# --- determinism and resume ---

@pytest.mark.parametrize("workers", [0, 2])
def test_same_arguments_give_bit_identical_batches_and_epochs_differ(demo_shards, workers):
    cfg = demo_cfg(demo_shards, num_workers=workers)
    args = dict(split="train", mode="pretrain", rank=0, world_size=1, seed=7)
    first = collect(build_loader(cfg, epoch=0, **args))
    again = collect(build_loader(cfg, epoch=0, **args))
    other = collect(build_loader(cfg, epoch=1, **args))
    assert len(first) == len(build_loader(cfg, epoch=0, **args)) > 5
    assert same_batches(first, again)
    assert first[0][0].dtype == torch.float32 and first[0][0].shape == (16, 3, 32, 32)
    assert first[0][1].dtype == torch.int64 and first[0][1].shape == (16,)
    assert not torch.equal(first[0][1], other[0][1])  # another epoch, another order


def test_loader_leaves_the_global_rng_alone(demo_shards):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    for _ in build_loader(demo_cfg(demo_shards), split="train", mode="finetune", rank=0, world_size=1, epoch=0, seed=0):
        pass
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_start_batch_yields_the_rest_of_the_same_epoch(demo_shards, workers):
    cfg = demo_cfg(demo_shards, num_workers=workers)
    args = dict(split="train", mode="pretrain", rank=0, world_size=1, epoch=3, seed=1)
    full = collect(build_loader(cfg, **args))
    resumed_loader = build_loader(cfg, start_batch=5, **args)
    resumed = collect(resumed_loader)
    assert same_batches(full[5:], resumed)
    assert resumed_loader.state_dict() == {"epoch": 3, "batches_consumed": len(full)}


def test_start_batch_decodes_only_the_remaining_samples(demo_shards, monkeypatch):
    from mae_core.data import transforms

    decoded = []
    original = transforms.SampleTransform.__call__
    monkeypatch.setattr(transforms.SampleTransform, "__call__", lambda self, data: decoded.append(1) or original(self, data))
    loader = build_loader(demo_cfg(demo_shards), split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0, start_batch=20)
    assert sum(1 for _ in loader) == len(loader) - 20
    assert len(decoded) == (len(loader) - 20) * 16


# --- splitting across ranks and workers ---

def test_every_rank_gets_the_same_number_of_full_batches_from_disjoint_samples(tmp_path):
    write_indexed_split(tmp_path, "train", [30, 7, 25, 12, 18, 9])
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=4, num_workers=2, shuffle_buffer=8)
    seen: list[list[int]] = []
    lengths = []
    for rank in range(2):
        loader = build_loader(cfg, split="train", mode="pretrain", rank=rank, world_size=2, epoch=0, seed=0)
        batches = collect(loader)
        lengths.append(len(loader))
        assert len(batches) == len(loader)
        assert all(images.shape[0] == 4 for images, _ in batches)
        indices = [i for images, _ in batches for i in decode_indices(images)]
        labels = [int(y) for _, labels in batches for y in labels]
        assert labels == [i % 4 for i in indices]  # images and labels stay paired
        seen.append(indices)
    assert lengths[0] == lengths[1] == 12  # 101 samples in 4 streams of 25-26: 6 full batches each
    assert len(set(seen[0])) == len(seen[0]) and len(set(seen[1])) == len(seen[1])
    assert not set(seen[0]) & set(seen[1])


def test_samples_are_split_into_equal_contiguous_runs_across_shards():
    shards = [ShardInfo(f"s{i}", c, 0, "") for i, c in enumerate([100, 100, 40, 0, 100, 7])]
    streams = split_evenly(shards, 5)
    assert [sum(part.count for part in stream) for stream in streams] == [69, 69, 70, 69, 70]
    pieces = [(part.shard.name, part.start, part.stop) for stream in streams for part in stream]
    assert pieces == [("s0", 0, 69), ("s0", 69, 100), ("s1", 0, 38), ("s1", 38, 100), ("s2", 0, 8), ("s2", 8, 40),
                      ("s4", 0, 37), ("s4", 37, 100), ("s5", 0, 7)]


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_yields_every_sample_exactly_once_on_one_rank(tmp_path, workers):
    write_indexed_split(tmp_path, "val", [10, 7, 5])
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=4, num_workers=workers)
    loader = build_loader(cfg, split="val", mode="eval", rank=0, world_size=1, epoch=0, seed=0)
    batches = collect(loader)
    assert len(batches) == len(loader)
    indices = sorted(i for images, _ in batches for i in decode_indices(images))
    assert indices == list(range(22))
    assert sum(int((labels != IGNORE_LABEL).sum()) for _, labels in batches) == 22


def test_eval_on_two_ranks_splits_the_samples_and_pads_to_equal_length(tmp_path):
    write_indexed_split(tmp_path, "val", [10, 4, 3])
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=4, num_workers=0)
    real, lengths = [], set()
    for rank in range(2):
        loader = build_loader(cfg, split="val", mode="eval", rank=rank, world_size=2, epoch=0, seed=0)
        batches = collect(loader)
        lengths.add((len(loader), len(batches)))
        for images, labels in batches:
            keep = labels != IGNORE_LABEL
            real += decode_indices(images[keep])
    assert lengths == {(3, 3)}  # 8 samples (2 batches) on rank 0, padded to rank 1's 9 (3 batches)
    assert sorted(real) == list(range(17))


# --- damaged data ---

def test_corrupt_jpeg_and_missing_label_are_skipped_and_counted(tmp_path):
    good = jpeg(index_colour(5))
    broken = {5: {"jpg": good[: len(good) // 2], "cls": 1}, 11: {"jpg": jpeg(index_colour(11))}, 17: {"jpg": b"not an image", "cls": 1}}
    write_indexed_split(tmp_path, "train", [12, 12], broken=broken)
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=4, num_workers=2, shuffle_buffer=1)
    loader = build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0)
    batches = collect(loader)
    assert loader.skipped == 3
    assert len(batches) == len(loader) == 6 and all(labels.shape == (4,) for _, labels in batches)
    seen = {i for images, _ in batches for i in decode_indices(images)}
    assert seen.isdisjoint({5, 11, 17}) and len(seen) == 21

    write_indexed_split(tmp_path / "v", "val", [12, 12], broken=broken)
    evaluation = build_loader(DataConfig(url=str(tmp_path / "v"), img_size=16, batch_size=4, num_workers=0),
                              split="val", mode="eval", rank=0, world_size=1, epoch=0, seed=0)
    labels = torch.cat([y for _, y in evaluation])
    assert evaluation.skipped == 3 and int((labels == IGNORE_LABEL).sum()) == 3 and labels.numel() == 24


def test_an_unreadable_shard_is_retried_then_its_samples_skipped_and_reported_by_url(tmp_path, caplog):
    write_indexed_split(tmp_path, "train", [8, 8])
    shard = tmp_path / shard_name("train", 1)
    shard.write_bytes(shard.read_bytes()[:3000])  # cut mid-member
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=4, num_workers=0, shard_retries=2, retry_delay_s=0)
    with caplog.at_level(logging.WARNING, logger="mae_core.data.reader"):
        loader = build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0)
        batches = collect(loader)
    assert sum("retry" in r.message for r in caplog.records) == 2
    assert any(r.levelno == logging.ERROR and "train-000001.tar" in r.message for r in caplog.records)
    # The batch plan holds; what the cut took is counted (the rest of shard 1 after its first sample).
    assert len(batches) == len(loader) == 4 and loader.skipped == 7
    assert {i for images, _ in batches for i in decode_indices(images)} == set(range(9))
    with pytest.raises(ShardReadError, match="train-000001.tar"):  # the reader alone still raises
        from mae_core.data.reader import iter_shard
        list(iter_shard(str(shard), expected=8, retries=0))


# --- errors before training ---

def test_too_few_shards_for_ranks_times_workers_is_a_clear_error(tmp_path):
    write_indexed_split(tmp_path, "train", [8, 8, 8])
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=4, num_workers=2)
    with pytest.raises(DataError, match=r"3 shards.*2 ranks x 2 loader workers need at least 4"):
        build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=2, epoch=0, seed=0)


def test_batches_larger_than_a_worker_stream_are_refused(tmp_path):
    write_indexed_split(tmp_path, "train", [8, 8])
    cfg = DataConfig(url=str(tmp_path), img_size=16, batch_size=16, num_workers=2)
    with pytest.raises(DataError, match="fewer than one batch of 16"):
        build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0)


def test_empty_split_and_missing_manifest_are_clear_errors(tmp_path):
    write_manifest(Manifest(split="train", classes=["a"], shards=[]), str(tmp_path))
    cfg = DataConfig(url=str(tmp_path), num_workers=0)
    with pytest.raises(DataError, match="has no samples"):
        build_loader(cfg, split="train", mode="pretrain", rank=0, world_size=1, epoch=0, seed=0)
    with pytest.raises(ManifestError, match=r"no manifest for split 'val'.*val\.manifest\.json"):
        build_loader(cfg, split="val", mode="eval", rank=0, world_size=1, epoch=0, seed=0)
    (tmp_path / "val.manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(str(tmp_path), "val")


def test_brace_pattern_selects_listed_shards(tmp_path):
    write_indexed_split(tmp_path, "train", [3, 4, 5])
    manifest = read_manifest(str(tmp_path / "train-{000001..000002}.tar"), "train")
    assert manifest.counts == [4, 5] and manifest.root == str(tmp_path)
    with pytest.raises(ManifestError, match="train-000006.tar"):
        read_manifest(str(tmp_path / "train-{000006..000007}.tar"), "train")


def test_config_rejects_bad_values_with_the_field_name():
    assert DataConfig(url="x", crop_scale=[0.3, 0.9]).crop_scale == (0.3, 0.9)  # YAML lists are fine
    with pytest.raises(ValueError, match="DataConfig.crop_scale"):
        DataConfig(url="x", crop_scale=(0.9, 0.3))
    with pytest.raises(ValueError, match="DataConfig.std"):
        DataConfig(url="x", std=(0.2, 0.2))
    with pytest.raises(ValueError, match="DataConfig.batch_size"):
        DataConfig(url="x", batch_size=0)


# --- transforms ---

def photo(width: int, height: int, seed: int = 0, noise: float = 8.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((height // 16 + 1, width // 16 + 1, 3)) * 255).astype(np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.float32)
    return Image.fromarray(np.clip(smooth + rng.normal(0, noise, smooth.shape), 0, 255).astype(np.uint8))


def encoded(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


def test_crop_and_resize_match_torchvision_on_the_decoded_image():
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from mae_core.data.decode import View, decode_view, open_image

    data = encoded(photo(200, 150))
    view = View(top=20, left=30, height=100, width=120, flip=True)
    # The accurate decode (eval's): then only the crop and resize can differ. The fast decode of the
    # training modes is compared with torchvision in test_data_decode.py.
    ours = decode_view(open_image(data), view, 64, draft=True, fast=False).int()
    reference = TF.pil_to_tensor(TF.horizontal_flip(TF.resized_crop(
        Image.open(io.BytesIO(data)).convert("RGB"), 20, 30, 100, 120, [64, 64], interpolation=InterpolationMode.BICUBIC, antialias=True)
    )).int()
    assert (ours - reference).abs().max() <= 2


def test_draft_decoding_stays_close_to_a_full_decode():
    from mae_core.data.decode import View, decode_view, draft_factor, open_image

    data = encoded(photo(640, 480))
    view = View(top=0, left=80, height=480, width=480)
    assert draft_factor(view, 112) == 4 and draft_factor(view, 241) == 1
    drafted = decode_view(open_image(data), view, 112, draft=True).float()
    full = decode_view(open_image(data), view, 112, draft=False).float()
    assert (drafted - full).abs().mean() < 3


def test_eval_transform_is_resize_then_centre_crop():
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    from mae_core.data.transforms import CentreView, SampleTransform

    # Resize(128) then CenterCrop(112) keeps a 175 px square of a 300 x 200 image, centred
    # (to the nearest original pixel: the reference's own rounding happens at the resized scale).
    view = CentreView(112, 0.875)(Image.new("RGB", (300, 200)))
    assert (view.height, view.width, view.top, view.left) == (175, 175, 12, 62)
    data = encoded(photo(300, 200, noise=0))
    ours = SampleTransform(DataConfig(url="x", img_size=112), "eval")(data).int()
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    same_box = TF.pil_to_tensor(TF.resized_crop(pil, 12, 62, 175, 175, [112, 112], interpolation=v2.InterpolationMode.BICUBIC)).int()
    assert (ours - same_box).abs().max() <= 2
    reference = v2.Compose([v2.Resize(128, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(112)])
    expected = TF.pil_to_tensor(reference(pil)).int()
    assert (ours - expected).abs().float().mean() < 6  # a third of a pixel apart; a pixel off is ~3x that


def test_modes_apply_their_own_recipes(demo_shards):
    cfg = demo_cfg(demo_shards, num_workers=0)
    first = {mode: next(iter(build_loader(cfg, split="train", mode=mode, rank=0, world_size=1, epoch=0, seed=0)))
             for mode in ("pretrain", "finetune", "linprobe")}
    assert torch.equal(first["pretrain"][1], first["finetune"][1])  # same samples
    assert not torch.equal(first["pretrain"][0], first["finetune"][0])  # other augmentation
    assert not torch.equal(first["pretrain"][0], first["linprobe"][0])  # wider crop scale
    evaluation = [next(iter(build_loader(cfg, split="val", mode="eval", rank=0, world_size=1, epoch=e, seed=e))) for e in (0, 1)]
    assert torch.equal(evaluation[0][0], evaluation[1][0])  # eval has no randomness
    with pytest.raises(ValueError, match="unknown data mode"):
        build_loader(cfg, split="train", mode="train", rank=0, world_size=1, epoch=0, seed=0)


# --- restart segments: the same batches, decoded from less ---

def test_shards_with_restart_segments_give_the_batches_of_plain_shards(tmp_path):
    """The writer's restart markers are lossless and the segment decoder exact: a loader over
    shards written with them yields bit-identical batches to one over the files' own bytes, in
    every training mode and in eval."""
    from bench.data import write_imagefolder
    from mae_core.data import decode
    from mae_core.data.sources import scan_split
    from mae_core.data.writer import ShardOptions, write_split

    if decode._jpegcrop is None:
        pytest.skip("the _jpegcrop extension was not built")
    source = scan_split(str(write_imagefolder(tmp_path / "src", 24, (200, 150), num_classes=3)), "train")
    for columns in (32, 0):
        write_split(source, str(tmp_path / f"restarts-{columns}"), ShardOptions(maxcount=8, restart_columns=columns))
    for mode in ("pretrain", "finetune", "linprobe", "eval"):
        batches = [collect(build_loader(demo_cfg(str(tmp_path / f"restarts-{columns}"), img_size=64, batch_size=8), split="train",
                                        mode=mode, rank=0, world_size=1, epoch=0, seed=3)) for columns in (32, 0)]
        assert len(batches[0]) == 3 and same_batches(*batches), mode
