"""JPEG bytes -> a cropped, resized uint8 image tensor, decoding no more pixels than the crop needs.

JPEG decoding dominates the input pipeline. Two things make it cheap here:
- PIL's draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale (in the DCT domain, far cheaper
  than decoding in full and shrinking). The crop is chosen from the header alone, before decoding,
  so the scale can be the smallest one that still leaves the crop at least as large as the output.
- The crop is resized with torch's uint8 antialiased bicubic kernel on a channels-last view of the
  decoded pixels, several times faster than PIL's resize, and matching it to about one grey level.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DRAFT_FACTORS = (8, 4, 2)  # the reduced scales libjpeg decodes to, via PIL's draft mode


@dataclass(frozen=True)
class View:
    """The part of the original image to keep (pixels), and whether to mirror it."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def open_image(data: bytes) -> Image.Image:
    """A lazily opened image: size and format are known, no pixels decoded yet."""
    return Image.open(io.BytesIO(data))


def draft_factor(view: View, out_size: int) -> int:
    """The largest reduction (8, 4, 2 or 1) that keeps the crop at least `out_size` on each side."""
    shorter = min(view.height, view.width)
    return next((f for f in DRAFT_FACTORS if shorter >= f * out_size), 1)


def decode_view(image: Image.Image, view: View, out_size: int, *, draft: bool = True) -> torch.Tensor:
    """Decode `image`, cut out `view`, resize it to (out_size, out_size). Returns uint8 (3, S, S)."""
    full_w, full_h = image.size
    factor = draft_factor(view, out_size) if draft else 1
    if factor > 1 and image.format == "JPEG":
        # PIL picks the largest scale whose result is >= the requested size: asking for
        # size // factor yields exactly 1/factor.
        image.draft("RGB", (full_w // factor, full_h // factor))
    if image.mode != "RGB":
        image = image.convert("RGB")  # greyscale, CMYK and palette images; decodes as a side effect
    pixels = np.asarray(image)  # (H', W', 3), decoded here; read-only
    y0, y1 = _scaled_span(view.top, view.height, full_h, pixels.shape[0])
    x0, x1 = _scaled_span(view.left, view.width, full_w, pixels.shape[1])
    # A contiguous copy of just the crop: HWC memory is NCHW channels-last, the layout torch's
    # uint8 antialiased resize is vectorised for.
    crop = torch.from_numpy(np.array(pixels[y0:y1, x0:x1])).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(crop, size=(out_size, out_size), mode="bicubic", antialias=True)
    if view.flip:
        out = out.flip(-1)
    return out[0]  # (3, S, S), channels-last strides; batching makes it contiguous


def _scaled_span(start: int, length: int, full: int, decoded: int) -> tuple[int, int]:
    """[start, start + length) in original pixels, mapped onto an axis decoded at `decoded` pixels."""
    scale = decoded / full
    lo = min(int(round(start * scale)), decoded - 1)
    hi = max(min(int(round((start + length) * scale)), decoded), lo + 1)
    return lo, hi
