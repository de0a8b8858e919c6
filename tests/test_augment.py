"""Fine-tune / linear-probe / Table 1e augmentation (mae_core/data/augment.py).

Fine-tuning IS timm's: the RandAugment and RandomErasing objects come from `timm.data.create_transform`
called as the MAE release calls it, and our crop (kept on the fast decode path) has the
distribution of timm's RandomResizedCropAndInterpolation. The linear probe's crop is the release's
single draw; the fixed-size crop is resize + random crop of fixed size; colour jitter is
torchvision's.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mae_core.data.augment import (
    BatchErasing,
    FinetuneAugment,
    FixedSizeView,
    SingleDrawView,
    eval_crop_ratio,
    randaug_policy,
    timm_finetune_transform,
    torch_seeded_python_rngs,
)
from mae_core.data.config import DataConfig
from mae_core.data.transforms import BatchTransform, CentreView, RandomResizedView, SampleTransform


def _cfg(**kw) -> DataConfig:
    return DataConfig(url="/data", **kw)


def _ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(np.asarray(a)), np.sort(np.asarray(b))
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b))))


def _jpeg(width=96, height=72, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_finetune_augmentation_is_timms_release_recipe():
    from timm.data.auto_augment import RandAugment
    from timm.data.random_erasing import RandomErasing

    cfg = _cfg(img_size=224)
    assert randaug_policy(cfg) == "rand-m9-n2-mstd0.5-inc1"  # = the release's rand-m9-mstd0.5-inc1 (n defaults to 2)
    sample = SampleTransform(cfg, "finetune")
    randaug = [t for t in sample.augment.ops.transforms if isinstance(t, RandAugment)]
    assert len(randaug) == 1 and len(sample.augment.ops.transforms) == 1  # no colour jitter
    ops = randaug[0].ops
    assert randaug[0].num_layers == 2 and len(ops) == 15
    names = {op.name for op in ops}
    assert {"Invert", "SolarizeAdd", "PosterizeIncreasing", "SolarizeIncreasing", "Rotate"} <= names
    for op in ops:
        assert (op.prob, op.magnitude, op.magnitude_std) == (0.5, 9, 0.5)
        assert op.hparams["img_mean"] == (124, 116, 104)  # fill: the mean colour, as timm derives it
        assert op.hparams["interpolation"] == Image.BICUBIC
    erase = BatchTransform(cfg, "finetune").erase.erase
    assert isinstance(erase, RandomErasing) and (erase.probability, erase.mode) == (0.25, "pixel")
    assert isinstance(timm_finetune_transform(cfg)[2].transforms[-1], RandomErasing)
    # the other modes have neither
    assert SampleTransform(cfg, "linprobe").augment is None and BatchTransform(cfg, "linprobe").erase is None
    assert SampleTransform(cfg, "pretrain").augment is None


def test_finetune_randaugment_gives_timms_output_for_the_same_draws():
    """Our stage on a decoded crop == timm's own secondary transform on the same PIL image, given
    the same Python/NumPy generator states (which we derive from torch's per-batch seed)."""
    cfg = _cfg(img_size=64)
    ours = FinetuneAugment(cfg)
    _, timm_secondary, _ = timm_finetune_transform(cfg)
    rng = np.random.default_rng(1)
    changed = 0
    for i in range(40):
        image = torch.from_numpy(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).permute(2, 0, 1)
        torch.manual_seed(i)
        got = ours(image)
        torch.manual_seed(i)
        with torch_seeded_python_rngs():
            want = np.asarray(timm_secondary(Image.fromarray(image.permute(1, 2, 0).numpy())))
        assert got.dtype == torch.uint8 and got.shape == (3, 64, 64)
        assert torch.equal(got, torch.from_numpy(want.copy()).permute(2, 0, 1))
        changed += not torch.equal(got, image)
    assert changed > 20  # most images are changed by at least one op (each applies with p 0.5)


def test_timm_draws_follow_torchs_seed_and_leave_global_generators_alone():
    cfg = _cfg(img_size=32)
    augment = FinetuneAugment(cfg)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).permute(2, 0, 1)
    random.seed(5), np.random.seed(5)
    before = (random.random(), np.random.rand())
    random.seed(5), np.random.seed(5)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(augment(image))
    assert torch.equal(*outs)  # the same torch seed, the same augmentation
    assert (random.random(), np.random.rand()) == before  # Python's and NumPy's streams untouched


def test_finetune_crop_has_timms_distribution():
    """Our header-only RandomResizedView against timm's RandomResizedCropAndInterpolation.get_params."""
    cfg = _cfg(img_size=224)
    primary = timm_finetune_transform(cfg)[0].transforms[0]
    image = Image.new("RGB", (500, 375))
    view = SampleTransform(cfg, "finetune").view
    assert isinstance(view, RandomResizedView)
    torch.manual_seed(0)
    random.seed(0)
    n = 3000
    ours = [view(image) for _ in range(n)]
    theirs = [primary.get_params(image, primary.scale, primary.ratio) for _ in range(n)]  # (top, left, h, w)
    for name, a, b in (
        ("area", [v.height * v.width for v in ours], [h * w for _, _, h, w in theirs]),
        ("aspect", [v.width / v.height for v in ours], [w / h for _, _, h, w in theirs]),
        ("centre x", [v.left + v.width / 2 for v in ours], [j + w / 2 for _, j, _, w in theirs]),
    ):
        assert _ks(a, b) < 0.05, name  # the 0.1% critical value for n = 3000 is ~0.05
    assert 0.4 < sum(v.flip for v in ours) / n < 0.6


def test_random_erasing_erases_about_a_quarter_of_the_images_each_on_its_own():
    cfg = _cfg(img_size=32)
    erase = BatchErasing(cfg)
    torch.manual_seed(0)
    images = torch.zeros(400, 3, 32, 32)
    out = erase(images.clone())
    erased = (out != 0).flatten(1).any(dim=1)
    assert 0.18 < erased.float().mean() < 0.32
    boxes = {tuple((out[i, 0] != 0).nonzero().min(0).values.tolist()) for i in torch.nonzero(erased).flatten()[:20]}
    assert len(boxes) > 10  # a box of its own for each image, not one for the batch


def test_linear_probe_crop_is_the_releases_single_draw():
    cfg = _cfg(img_size=224)
    view = SampleTransform(cfg, "linprobe").view
    assert isinstance(view, SingleDrawView)
    image = Image.new("RGB", (500, 375))
    torch.manual_seed(0)
    boxes = [view(image) for _ in range(4000)]
    for b in boxes:
        assert 0 <= b.top and b.top + b.height <= 375 and 0 <= b.left and b.left + b.width <= 500
    # One draw, clamped: large areas at wide ratios are cut to the full height (375), which the
    # ten-try sampler would have redrawn; it never falls back to the centred whole image either.
    assert sum(b.height == 375 for b in boxes) > 100
    # The drawn area fraction (before clamping) is uniform in (0.08, 1): the median box of the
    # single draw is close to what U(0.08, 1) * area gives for unclamped boxes.
    unclamped = [b.height * b.width / (500 * 375) for b in boxes if b.height < 375 and b.width < 500]
    assert 0.35 < np.median(unclamped) < 0.5


def test_fixed_size_crop_is_resize_then_random_crop_of_fixed_size():
    cfg = _cfg(img_size=224, pretrain_crop="fixed_size")
    view = SampleTransform(cfg, "pretrain").view
    assert isinstance(view, FixedSizeView)
    image = Image.new("RGB", (400, 300))  # 4:3, short side 300 -> resized 256, so the crop is 224/256 of it
    torch.manual_seed(0)
    boxes = [view(image) for _ in range(2000)]
    side = round(224 * 300 / 256)
    assert {(b.height, b.width) for b in boxes} == {(side, side)}  # the same size every draw
    tops, lefts = [b.top for b in boxes], [b.left for b in boxes]
    assert min(tops) == 0 and max(tops) == 300 - side  # positions over the whole range, not centred
    assert min(lefts) == 0 and max(lefts) >= 400 - side - 2
    assert len(set(lefts)) > 50 and abs(np.mean(lefts) - (400 - side) / 2) < 5
    assert 0.4 < np.mean([b.flip for b in boxes]) < 0.6


def test_colour_jitter_knob_is_torchvisions():
    from torchvision.transforms import v2

    assert SampleTransform(_cfg(img_size=32), "pretrain").augment is None  # off by default (the recipe)
    jitter = SampleTransform(_cfg(img_size=32, color_jitter=0.4), "pretrain").augment
    assert isinstance(jitter, v2.ColorJitter)
    assert jitter.brightness == (0.6, 1.4) and jitter.contrast == (0.6, 1.4) and jitter.saturation == (0.6, 1.4)
    assert jitter.hue is None
    torch.manual_seed(0)
    out = SampleTransform(_cfg(img_size=32, color_jitter=0.4), "pretrain")(_jpeg())
    torch.manual_seed(0)
    plain = SampleTransform(_cfg(img_size=32), "pretrain")(_jpeg())
    assert out.shape == plain.shape == (3, 32, 32) and not torch.equal(out, plain)


def test_eval_crop_ratio_follows_the_release_above_224():
    assert eval_crop_ratio(_cfg(img_size=224)) == 0.875
    assert eval_crop_ratio(_cfg(img_size=448)) == 1.0
    assert eval_crop_ratio(_cfg(img_size=448, eval_crop_ratio=0.9)) == 0.9
    view = SampleTransform(_cfg(img_size=448), "eval").view
    assert isinstance(view, CentreView)
    box = view(Image.new("RGB", (600, 450)))
    assert (box.height, box.width) == (450, 450)  # the whole short side at 448 px


@pytest.mark.parametrize("key, value", [("randaug_magnitude", 11), ("color_jitter", 1.5), ("fixed_crop_ratio", 0.0),
                                        ("pretrain_crop", "centre")])
def test_bad_augmentation_knobs_are_refused(key, value):
    from mae_core.structured import ConfigError, from_dict

    with pytest.raises((ConfigError, ValueError), match=key):
        from_dict(DataConfig, {"url": "/data", key: value})


def test_timm_mixup_as_the_release_configures_it(tmp_path):
    from timm.data import Mixup

    from mae_core.engine.config import load_run_config
    from mae_core.engine.distributed import DistEnv
    from mae_core.engine.tasks import FinetuneTask

    cfg = load_run_config({"task": "finetune", "output_dir": str(tmp_path), "data": {"url": "/data", "img_size": 32, "batch_size": 8},
                           "model": {"name": "mae_vit_micro_patch4_32"}, "finetune": {"num_classes": 10}})
    task = FinetuneTask(cfg, DistEnv(rank=0, world_size=1, local_rank=0), torch.device("cpu"))
    mix = task.mix
    assert isinstance(mix, Mixup)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.mix_prob, mix.switch_prob, mix.mode, mix.label_smoothing) == (0.8, 1.0, 1.0, 0.5, "batch", 0.1)
    torch.manual_seed(0), np.random.seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    loss = task.loss(task.model, images, labels)
    assert math.isfinite(float(loss.detach()))
    with pytest.raises(Exception, match="even"):
        FinetuneTask(load_run_config({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "batch_size": 7}}),
                     DistEnv(rank=0, world_size=1, local_rank=0), torch.device("cpu"))
