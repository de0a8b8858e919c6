"""The JPEG decode path (mae_core/data/decode.py): libjpeg-turbo decoding only the crop window
(the `_jpegcrop` extension) for YCbCr and greyscale JPEGs, whole-image decoding through simplejpeg
without it, PIL for everything else, reduced-scale decoding, quality against torchvision on the
same crop box, and the crop sampler's distribution against torchvision's RandomResizedCrop."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mae_core.data import DataConfig, decode
from mae_core.data.decode import View, decode_view, open_image
from mae_core.data.transforms import RandomResizedView, SampleTransform

pytestmark = pytest.mark.skipif(decode.simplejpeg is None, reason="simplejpeg is not installed")
needs_crop_decoder = pytest.mark.skipif(decode._jpegcrop is None, reason="the _jpegcrop extension was not built")
LIBJPEG_TURBO = "crop window" if decode._jpegcrop is not None else "simplejpeg"  # what decodes YCbCr JPEGs here


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Photo-like RGB: colour structure at 64 and 16 px, grey detail at 4 and 2 px, sensor noise."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width, 3), np.float32)
    for cell, weight, channels in ((64, 0.5, 3), (16, 0.25, 3), (4, 0.15, 1), (2, 0.1, 1)):
        coarse = (rng.random((height // cell + 2, width // cell + 2, channels)) * 255).astype(np.uint8)
        image = Image.fromarray(coarse if channels == 3 else coarse[..., 0]).resize((width, height), Image.BICUBIC)
        canvas += weight * np.asarray(image, np.float32).reshape(height, width, -1)
    canvas += rng.normal(0, 6, (height, width, 1)) + rng.normal(0, 2, (height, width, 3))
    return np.clip(canvas, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **options) -> bytes:
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 90} | options if fmt == "JPEG" else options))
    return out.getvalue()


def torchvision_crop(data: bytes, view: View, size: int) -> torch.Tensor:
    """torchvision's way on the same box: PIL decode, resized_crop (bicubic, antialiased), flip."""
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    out = TF.resized_crop(pil, view.top, view.left, view.height, view.width, [size, size],
                          interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return TF.pil_to_tensor(TF.horizontal_flip(out) if view.flip else out)


def diff_stats(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, float]:
    """Absolute difference in grey levels: mean, 99th percentile, signed mean."""
    signed = ours.float() - reference.float()
    return signed.abs().mean().item(), torch.quantile(signed.abs().flatten(), 0.99).item(), signed.mean().item()


# --- which decoder ---

KINDS = ["baseline", "progressive", "greyscale", "4:4:4"]


def jpeg_of_kind(kind: str, width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    pixels = photo(width, height, seed)
    return {"baseline": encode(pixels), "progressive": encode(pixels, progressive=True),
            "greyscale": encode(pixels, mode="L"), "4:4:4": encode(pixels, subsampling=0)}[kind]


@pytest.mark.parametrize("crop_decoder", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_ycbcr_and_greyscale_jpegs_take_a_libjpeg_turbo_path(kind, crop_decoder, monkeypatch):
    monkeypatch.setattr(decode, "use_crop_decode", crop_decoder)
    image = open_image(jpeg_of_kind(kind))
    assert image.fast and image.size == (96, 64)
    out = decode_view(image, View(0, 0, 64, 96), 32)
    assert image.decoded_by == (LIBJPEG_TURBO if crop_decoder else "simplejpeg")
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    if kind == "greyscale":
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


# --- the crop window ---

@needs_crop_decoder
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("fast", [True, False])
def test_crop_window_decode_is_the_whole_decode_cut_to_the_box(kind, factor, fast):
    """Decoding only the crop window gives exactly the pixels of the whole image decoded at the
    same scale (and IDCT / upsampling settings) and cut to the same box, for boxes anywhere: at the
    edges, off the 8/16-pixel block grid, one pixel wide."""
    width, height = 250, 187
    data = jpeg_of_kind(kind, width, height, seed=factor)
    image = open_image(data)
    whole = decode._decode_simplejpeg(image, factor, fast)
    full_w, full_h = -(-width // factor), -(-height // factor)
    rng = np.random.default_rng(factor)
    boxes = [(0, 0, full_h, full_w), (full_h - 1, full_w - 1, 1, 1), (0, full_w - 3, full_h, 3), (1, 1, full_h - 2, full_w - 2)]
    for _ in range(6):
        h, w = int(rng.integers(1, full_h + 1)), int(rng.integers(1, full_w + 1))
        boxes.append((int(rng.integers(0, full_h - h + 1)), int(rng.integers(0, full_w - w + 1)), h, w))
    for top, left, h, w in boxes:
        window = decode._jpegcrop.decode(data, factor, left, top, w, h, fast)
        window = np.frombuffer(window, np.uint8).reshape(h, w, 3)
        assert np.array_equal(window, whole[top:top + h, left:left + w]), (top, left, h, w)


# --- restart-marker windows ---

RESTART_KINDS = KINDS + ["4:2:2", "odd size"]


def restart_source(kind: str, width: int = 250, height: int = 187, seed: int = 0) -> bytes:
    if kind == "4:2:2":
        return encode(photo(width, height, seed), subsampling=1)
    if kind == "odd size":  # a row of MCUs that only 1 and itself divide: 31 MCUs of 16 px
        return encode(photo(16 * 30 + 5, 77, seed))
    return jpeg_of_kind(kind, width, height, seed)


@needs_crop_decoder
@pytest.mark.parametrize("kind", RESTART_KINDS)
@pytest.mark.parametrize("columns", [8, 32, 64])
def test_restart_markers_are_lossless_and_laid_out_per_block_row(kind, columns):
    """with_restarts keeps the DCT coefficients: every decoder gives the same pixels as from the
    original; the markers fall every few MCUs, a whole number of segments a block row."""
    data = restart_source(kind)
    marked = decode._jpegcrop.with_restarts(data, columns)
    assert decode._jpegcrop.restart_layout(data) is None
    interval, mcu_w, mcu_h = decode._jpegcrop.restart_layout(marked)
    width, height = Image.open(io.BytesIO(data)).size
    assert (mcu_w, mcu_h) == {"greyscale": (8, 8), "4:4:4": (8, 8), "4:2:2": (16, 8)}.get(kind, (16, 16))
    per_row = -(-width // mcu_w)
    assert per_row % interval == 0 and interval <= max(1, columns // mcu_w)
    if kind == "odd size":
        assert interval == 1  # 31 MCUs a row: no divisor up to the 2 or 4 asked for
    for decoder in (lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
                    lambda b: decode.simplejpeg.decode_jpeg(b, fastdct=True, fastupsample=True)):
        assert np.array_equal(decoder(marked), decoder(data))
    assert Image.open(io.BytesIO(marked)).info.get("progression") is None  # progressive comes out baseline
    # Optimised Huffman tables pay for the markers, except against progressive coding (which packs
    # ~8% tighter) or a marker every MCU or two.
    assert len(marked) < (1.10 if kind == "progressive" or columns < 32 else 1.01) * len(data)


@needs_crop_decoder
@pytest.mark.parametrize("kind", RESTART_KINDS)
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("fast", [True, False])
def test_restart_window_decode_is_the_whole_decode_cut_to_the_box(kind, factor, fast):
    """Cutting the restart segments a box covers out of the scan gives exactly the pixels of the
    whole image decoded and cut to the box, and of the same decode that ignores the markers:
    boxes at every edge, on and off the MCU and segment grid, one pixel wide."""
    data = decode._jpegcrop.with_restarts(restart_source(kind, seed=factor), 32)
    width, height = Image.open(io.BytesIO(data)).size
    whole = decode._decode_simplejpeg(open_image(data), factor, fast)
    full_w, full_h = -(-width // factor), -(-height // factor)
    rng = np.random.default_rng(factor)
    boxes = [(0, 0, full_h, full_w), (full_h - 1, full_w - 1, 1, 1), (0, full_w - 3, full_h, 3), (1, 1, full_h - 2, full_w - 2),
             (16 // factor, 32 // factor, 16 // factor or 1, 32 // factor or 1), (full_h // 2, 0, 1, full_w)]
    for _ in range(12):
        h, w = int(rng.integers(1, full_h + 1)), int(rng.integers(1, full_w + 1))
        boxes.append((int(rng.integers(0, full_h - h + 1)), int(rng.integers(0, full_w - w + 1)), h, w))
    for top, left, h, w in boxes:
        for restarts in (True, False):
            window = decode._jpegcrop.decode(data, factor, left, top, w, h, fast, restarts)
            window = np.frombuffer(window, np.uint8).reshape(h, w, 3)
            assert np.array_equal(window, whole[top:top + h, left:left + w]), (top, left, h, w, restarts)


@needs_crop_decoder
def test_damaged_restart_markers_fall_back_or_refuse():
    """A scan whose markers do not match its layout (renumbered, or cut off) is decoded from its
    start, which libjpeg-turbo then refuses (strict): the loader skips and counts the sample."""
    data = bytearray(decode._jpegcrop.with_restarts(restart_source("baseline"), 32))
    header_end = bytes(data).index(b"\xff\xda")
    first_rst = bytes(data).index(b"\xff\xd0", header_end)
    renumbered = bytearray(data)
    renumbered[first_rst + 1] = 0xD3
    for bad in (bytes(renumbered), bytes(data[: len(data) // 2])):
        with pytest.raises(ValueError):
            decode._jpegcrop.decode(bad, 1, 100, 150, 40, 30, True)


@needs_crop_decoder
@pytest.mark.parametrize("kind", ["baseline", "greyscale", "4:2:2"])
def test_mutated_restart_marked_jpegs_decode_or_refuse_never_crash(kind):
    """Random bytes written into headers, markers and scans (and truncations) of restart-marked
    JPEGs: every call returns or raises ValueError; a memory error would kill the test process.
    (Run under valgrind with 360 mutations when written: no error in the extension.)"""
    base = decode._jpegcrop.with_restarts(restart_source(kind), 32)
    rng = np.random.default_rng(7)
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(300):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.choice([0xFF, 0xD0 + int(rng.integers(0, 8)), 0xD9, 0xDA, 0x00, int(rng.integers(0, 256))]))
        if rng.random() < 0.2:
            data = data[: int(rng.integers(2, len(data)))]
        left, top = int(rng.integers(0, 31)), int(rng.integers(0, 23))
        for call in (lambda: decode._jpegcrop.decode(bytes(data), int(rng.choice([1, 2, 8])), left, top, 1 + int(rng.integers(0, 31 - left)),
                                                     1 + int(rng.integers(0, 23 - top)), bool(rng.random() < 0.5)),
                     lambda: decode._jpegcrop.restart_layout(bytes(data)), lambda: decode._jpegcrop.with_restarts(bytes(data), 32)):
            try:
                call()
                outcomes["decoded"] += 1
            except ValueError:
                outcomes["refused"] += 1
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0


@needs_crop_decoder
def test_crop_window_decoder_refuses_what_it_cannot_decode():
    data = jpeg_of_kind("baseline")
    for bad, message in (((data, 1, 90, 0, 10, 10, True), "outside the image"), ((data, 3, 0, 0, 8, 8, True), "scale"),
                         ((data[: len(data) // 2], 1, 0, 0, 96, 64, True), "Premature end"),
                         ((encode(photo(96, 64), mode="CMYK"), 1, 0, 0, 8, 8, True), "colour space")):
        with pytest.raises(ValueError, match=message):
            decode._jpegcrop.decode(*bad)
    assert decode._jpegcrop.header(data) == (96, 64, "YCbCr")


def test_without_the_crop_decoder_the_whole_image_is_decoded(monkeypatch):
    monkeypatch.setattr(decode, "_jpegcrop", None)
    view = View(5, 7, 50, 60, flip=True)
    data = jpeg_of_kind("baseline")
    image = open_image(data)
    out = decode_view(image, view, 32)
    assert image.decoded_by == "simplejpeg"
    monkeypatch.undo()
    if decode._jpegcrop is not None:  # and the window gives the same result
        with_window = open_image(data)
        assert torch.equal(decode_view(with_window, view, 32), out) and with_window.decoded_by == "crop window"


@pytest.mark.parametrize("kind", ["png named .jpg", "cmyk jpeg", "warning in strict mode"])
def test_other_images_fall_back_to_pil_and_decode_as_before(kind, monkeypatch):
    # Whole-image decoding: the crop window never reads the stray bytes (test below).
    monkeypatch.setattr(decode, "use_crop_decode", False)
    pixels = photo(96, 64)
    baseline = encode(pixels)
    data = {
        "png named .jpg": encode(pixels, "PNG"),
        "cmyk jpeg": encode(pixels, mode="CMYK"),
        # Stray bytes before the end marker: libjpeg-turbo warns (simplejpeg's strict mode refuses),
        # PIL decodes the image as usual.
        "warning in strict mode": baseline[:-2] + b"\x00\x00" + baseline[-2:],
    }[kind]
    view = View(4, 8, 56, 80, flip=True)
    image = open_image(data)
    assert image.size == (96, 64)
    assert image.fast == (kind == "warning in strict mode")  # header fine, refused at decode
    out = decode_view(image, view, 32)
    assert image.decoded_by == "pil"
    # The PIL path (the decoder before simplejpeg) decodes this too: same pixels.
    monkeypatch.setattr(decode, "use_simplejpeg", False)
    before = open_image(data)
    assert not before.fast
    assert torch.equal(out, decode_view(before, view, 32)) and before.decoded_by == "pil"
    assert (out.int() - torchvision_crop(data, view, 32).int()).abs().max() <= 2


@needs_crop_decoder
def test_the_crop_window_stops_before_stray_bytes_after_the_image():
    """Decoding stops at the crop's last row, so bytes between the scan and the end marker (which
    strict whole-image decoding refuses) are never read: the window decodes as usual."""
    baseline = encode(photo(96, 64))
    data = baseline[:-2] + b"\x00\x00" + baseline[-2:]
    image = open_image(data)
    out = decode_view(image, View(4, 8, 56, 80), 32)
    assert image.decoded_by == "crop window"
    assert torch.equal(out, decode_view(open_image(baseline), View(4, 8, 56, 80), 32))


def test_undecodable_bytes_raise_from_either_decoder():
    data = encode(photo(96, 64))
    truncated = open_image(data[: len(data) // 2])  # header intact, scan cut: both decoders refuse
    assert truncated.fast
    with pytest.raises(OSError):
        decode_view(truncated, View(0, 0, 64, 96), 32)
    with pytest.raises(OSError):  # PIL's UnidentifiedImageError
        open_image(b"not an image")


def test_without_libjpeg_turbo_everything_goes_through_pil(monkeypatch):
    monkeypatch.setattr(decode, "simplejpeg", None)
    monkeypatch.setattr(decode, "_jpegcrop", None)
    image = open_image(encode(photo(96, 64)))
    decode_view(image, View(0, 0, 64, 96), 32)
    assert not image.fast and image.decoded_by == "pil"


# --- reduced scale ---

@pytest.mark.parametrize("width,height", [(500, 375), (97, 61), (17, 9)])
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_reduced_scale_decodes_at_exactly_one_over_factor(width, height, factor):
    image = open_image(encode(photo(width, height)))
    pixels = decode._decode_simplejpeg(image, factor)
    assert pixels.shape == (math.ceil(height / factor), math.ceil(width / factor), 3)


def test_crops_large_enough_are_decoded_at_reduced_scale(monkeypatch):
    monkeypatch.setattr(decode, "use_crop_decode", False)  # the whole-image path; the window's below
    calls = []
    original = decode.simplejpeg.decode_jpeg
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", lambda data, **kw: calls.append(kw) or original(data, **kw))
    image = open_image(encode(photo(640, 480)))
    decode_view(image, View(0, 80, 480, 480), 112)  # 480 >= 4 x 112: quarter scale
    decode_view(image, View(0, 80, 480, 480), 112, draft=False)
    decode_view(image, View(0, 80, 300, 300), 224)  # < 2 x 224: full scale
    assert [(kw["min_height"], kw["min_width"]) for kw in calls] == [(120, 160), (480, 640), (480, 640)]


@needs_crop_decoder
def test_crop_windows_large_enough_are_decoded_at_reduced_scale(monkeypatch):
    calls = []
    original = decode._jpegcrop

    class Recording:
        header = staticmethod(original.header)

        @staticmethod
        def decode(data, factor, left, top, width, height, fast, restarts=True):
            calls.append((factor, left, top, width, height))
            return original.decode(data, factor, left, top, width, height, fast, restarts)

    monkeypatch.setattr(decode, "_jpegcrop", Recording)
    image = open_image(encode(photo(640, 480)))
    decode_view(image, View(0, 80, 480, 480), 112)  # 480 >= 4 x 112: quarter scale
    decode_view(image, View(0, 80, 480, 480), 112, draft=False)
    decode_view(image, View(1, 81, 299, 301), 224)  # < 2 x 224: full scale
    assert calls == [(4, 20, 0, 120, 120), (1, 80, 0, 480, 480), (1, 81, 1, 301, 299)]


# --- quality: against torchvision on the same crop box ---

def test_fast_decode_matches_torchvision_on_the_same_box_within_a_few_levels():
    """Training decode (fast IDCT + fast chroma upsampling, full scale) vs torchvision's
    ImageFolder way (PIL decode + resized_crop) on the same boxes."""
    torch.manual_seed(0)
    sampler = RandomResizedView(224, (0.2, 1.0), (3 / 4, 4 / 3), hflip=True)
    means, p99s, signed = [], [], []
    for seed in range(4):
        data = encode(photo(500, 375, seed))
        for _ in range(4):
            image = open_image(data)
            view = sampler(image)
            assert decode.draft_factor(view, 224) == 1  # 500 x 375 -> 224: always a full decode
            stats = diff_stats(decode_view(image, view, 224), torchvision_crop(data, view, 224))
            assert image.decoded_by == LIBJPEG_TURBO
            means.append(stats[0]), p99s.append(stats[1]), signed.append(stats[2])
    # Measured: mean 1.0, p99 3-4, the fast IDCT ~0.8 level darker on average.
    assert max(means) < 2 and max(p99s) <= 6 and -1.5 < float(np.mean(signed)) < 0.5


def test_accurate_decode_matches_torchvision_to_a_grey_level():
    data = encode(photo(500, 375, 7))
    view = View(30, 50, 300, 320, flip=True)
    ours = decode_view(open_image(data), view, 224, fast=False)
    mean, _, _ = diff_stats(ours, torchvision_crop(data, view, 224))
    assert mean < 0.2 and (ours.int() - torchvision_crop(data, view, 224).int()).abs().max() <= 2


def test_reduced_scale_stays_close_to_torchvision():
    """A half- or quarter-scale decode of only the crop window (crop >= 2x / 4x the output)
    against PIL's full decode followed by the same crop + resize (torchvision's way): the DCT-domain
    downscale is a sharper low-pass than bicubic antialiasing, and the box snaps to the reduced
    scale's pixel grid (as PIL's draft mode did before)."""
    data = encode(photo(1024, 768, 3))
    for view, size, factor in ((View(100, 200, 500, 520), 224, 2), (View(101, 201, 501, 521, flip=True), 224, 2),
                               (View(3, 5, 700, 900), 160, 4), (View(0, 0, 768, 1024), 112, 4)):
        image = open_image(data)
        assert decode.draft_factor(view, size) == factor
        ours = decode_view(image, view, size)
        assert image.decoded_by == LIBJPEG_TURBO
        mean, p99, _ = diff_stats(ours, torchvision_crop(data, view, size))
        full_scale_mean, _, _ = diff_stats(decode_view(open_image(data), view, size, draft=False), torchvision_crop(data, view, size))
        # Measured: mean 0.5-3.3 (the larger for boxes off the reduced grid), p99 2-12; full scale
        # on the same boxes: mean ~0.9.
        assert mean < 4 and p99 < 16 and full_scale_mean < 2


@pytest.mark.parametrize("crop_decoder", [True, False])
def test_eval_decodes_accurately_and_training_fast(crop_decoder, monkeypatch):
    monkeypatch.setattr(decode, "use_crop_decode", crop_decoder)
    seen = []
    whole, window = decode._decode_simplejpeg, decode._decode_crop_window
    monkeypatch.setattr(decode, "_decode_simplejpeg", lambda image, factor, fast=True: seen.append(fast) or whole(image, factor, fast))
    monkeypatch.setattr(decode, "_decode_crop_window", lambda image, view, factor, fast: seen.append(fast) or window(image, view, factor, fast))
    data = encode(photo(120, 90))
    for mode in ("pretrain", "finetune", "linprobe", "eval"):
        SampleTransform(DataConfig(url="x", img_size=32), mode)(data)
    assert seen == [True, True, True, False]


# --- the crop sampler ---

@pytest.mark.parametrize("width,height", [(500, 375), (300, 40)])
def test_crop_sampler_has_torchvision_s_distribution(width, height):
    """Same algorithm as torchvision's RandomResizedCrop, uniforms from one draw: the box
    statistics agree within sampling error (4000 draws each), fallbacks included."""
    draws = 4000
    ours_sampler = RandomResizedView(224, (0.2, 1.0), (3 / 4, 4 / 3), hflip=True)
    theirs = v2.RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    shape_only = torch.empty(()).expand(3, height, width)
    header = open_image(encode(photo(width, height)))
    torch.manual_seed(1)
    ours = np.array([[v.top, v.left, v.height, v.width, v.flip] for v in (ours_sampler(header) for _ in range(draws))], float)
    torch.manual_seed(2)
    ref = np.array([[p["top"], p["left"], p["height"], p["width"], 0] for p in (theirs.make_params([shape_only]) for _ in range(draws))], float)

    def features(boxes):
        top, left, h, w = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        return np.stack([h * w / (width * height), np.log(w / h), (top + h / 2) / height, (left + w / 2) / width], 1)

    for column, (a, b) in enumerate(zip(features(ours).T, features(ref).T)):
        stderr = math.sqrt(a.var() / draws + b.var() / draws) + 1e-9
        assert abs(a.mean() - b.mean()) < 4 * stderr, column
        assert abs(a.std() - b.std()) < 0.05 * max(b.std(), 1e-3), column
    assert ((ours[:, 2] <= height) & (ours[:, 3] <= width) & (ours[:, 0] >= 0) & (ours[:, 1] >= 0)).all()
    assert ((ours[:, 0] + ours[:, 2] <= height) & (ours[:, 1] + ours[:, 3] <= width)).all()
    assert 0.45 < ours[:, 4].mean() < 0.55  # half the views flipped


def test_crop_sampler_is_deterministic_for_a_seed():
    sampler = RandomResizedView(64, (0.2, 1.0), (3 / 4, 4 / 3), hflip=True)
    header = open_image(encode(photo(200, 150)))
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append([sampler(header) for _ in range(50)])
    assert runs[0] == runs[1] and len(set(runs[0])) == 50
