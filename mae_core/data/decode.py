"""JPEG bytes -> a cropped, resized uint8 image tensor, decoding no more pixels than the crop needs.

JPEG decoding dominates the input pipeline. What makes it cheap here:
- Crop-window decoding (libjpeg-turbo's scanline API through the small C extension `_jpegcrop`):
  the crop is chosen from the header alone, before decoding, and only the crop is decoded: no IDCT,
  upsampling or colour conversion for the columns beside it (`jpeg_crop_scanline`, to the nearest
  8/16-pixel block) or the rows above it (`jpeg_skip_scanlines`), and the rows below it are never
  entropy-decoded at all (decoding stops at its last row). On RandomResizedCrop(0.2-1) boxes of
  500 x 375 photos this saves ~15-25% of the decode. The decoded rows land in their final buffer:
  no copy of the crop before resizing.
- Restart-marker windows: entropy (Huffman) decoding, ~70-75% of a decode, cannot skip anything
  above the crop's bottom in an ordinary baseline JPEG (its scan has no index). The shard writer
  stores JPEGs losslessly re-coded with a restart marker every 32 pixels of each block row
  (writer.py); the extension then cuts the restart segments that cover the crop out of the scan
  as a small JPEG of their own, and only those are entropy-decoded: ~30% less decode time on
  these boxes, the pixels unchanged (docs/benchmarks.md). JPEGs without such markers take the
  crop-window path above.
- Reduced-scale decoding: the JPEG is decoded at 1/2, 1/4 or 1/8 scale (in the DCT domain, far
  cheaper than decoding in full and shrinking) when the crop still covers at least the output size
  at that scale; combined with the crop window. libjpeg-turbo also offers 3/8, 5/8, 6/8 and 7/8,
  but their IDCTs are plain C and cost more than a full-size SIMD decode, so only the power-of-two
  scales are used.
- Training modes use libjpeg-turbo's fast integer IDCT and fast (replicating) chroma upsampling:
  ~5% less decode time, about one grey level from PIL's decode on average (the fast IDCT rounds
  ~0.8 level darker; chroma edges differ more), measured in docs/data.md. Eval decodes with the
  accurate IDCT and smooth chroma upsampling: after the resize, 0.05 level from PIL's decode on
  average, 2 at most.
- The crop is resized with torch's uint8 antialiased bicubic kernel on a channels-last view of the
  decoded pixels, several times faster than PIL's resize, and matching it to about one grey level.

Fallbacks, each decoding the same pixels as before it existed: without the extension (not built:
no C compiler or libjpeg headers where maectl was installed) YCbCr / greyscale JPEGs are decoded
whole by libjpeg-turbo through simplejpeg (header read without decoding, ~1 us), then cropped.
Anything else (PNG or other formats, CMYK / YCCK JPEGs, or a JPEG that libjpeg-turbo refuses in
strict mode, e.g. one with a recoverable warning) goes through PIL, with PIL's draft mode for the
same reduced scales. Bytes that no decoder takes raise, and the loader skips the sample.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

try:
    import simplejpeg
except ImportError:  # a dependency, but an old environment may lack it: PIL does everything then
    simplejpeg = None
try:
    from . import _jpegcrop  # built at install when a C compiler and libjpeg's headers are there
except ImportError:
    _jpegcrop = None

DRAFT_FACTORS = (8, 4, 2)  # the reduced scales decoded to (libjpeg-turbo scaling / PIL draft mode)
# JPEG colour spaces decoded by libjpeg-turbo. CMYK / YCCK go through PIL, whose handling of
# Adobe's inverted CMYK is what the shard writer and verifier use too.
FAST_COLORSPACES = ("YCbCr", "Gray")
# For benchmarks and comparisons: use_crop_decode False decodes whole images (simplejpeg), as
# before the crop-window decoder; use_simplejpeg False decodes every image with PIL.
use_crop_decode = True
use_simplejpeg = True
# False: the crop-window decoder ignores restart markers (entropy-decodes the scan from its start).
use_restart_windows = True


@dataclass(frozen=True)
class View:
    """The part of the original image to keep (pixels), and whether to mirror it."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


class EncodedImage:
    """Encoded bytes with their header read: `size` (width, height, as PIL's) is known, no pixels
    are decoded yet. `fast`: a YCbCr or greyscale JPEG, for libjpeg-turbo. `decoded_by` says which
    decoder `decode_view` used ("crop window", "simplejpeg" or "pil")."""

    __slots__ = ("data", "size", "fast", "_pil", "decoded_by")

    def __init__(self, data: bytes, size: tuple[int, int], fast: bool, pil: Image.Image | None = None):
        self.data, self.size, self.fast, self._pil = data, size, fast, pil
        self.decoded_by: str | None = None

    @property
    def pil(self) -> Image.Image:
        """The lazily opened PIL image (opened on first use)."""
        if self._pil is None:
            self._pil = Image.open(io.BytesIO(self.data))
        return self._pil


def open_image(data: bytes) -> EncodedImage:
    """Read the header only. Raises (PIL's error) when the bytes are not an image PIL knows."""
    if use_simplejpeg and (simplejpeg is not None or (_jpegcrop is not None and use_crop_decode)):
        try:
            if simplejpeg is not None:
                height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
            else:
                width, height, colorspace = _jpegcrop.header(data)
        except ValueError:  # not a JPEG (e.g. a PNG saved as .jpg), or a header libjpeg-turbo refuses
            pass
        else:
            if colorspace in FAST_COLORSPACES and width > 0 and height > 0:
                return EncodedImage(data, (width, height), fast=True)
    image = Image.open(io.BytesIO(data))
    return EncodedImage(data, image.size, fast=False, pil=image)


def draft_factor(view: View, out_size: int) -> int:
    """The largest reduction (8, 4, 2 or 1) that keeps the crop at least `out_size` on each side."""
    shorter = min(view.height, view.width)
    for factor in DRAFT_FACTORS:
        if shorter >= factor * out_size:
            return factor
    return 1


def decode_view(image: EncodedImage, view: View, out_size: int, *, draft: bool = True, fast: bool = True) -> torch.Tensor:
    """Decode `image`, cut out `view`, resize it to (out_size, out_size). Returns uint8 (3, S, S).

    draft: decode at 1/2, 1/4 or 1/8 scale when the crop allows. fast: libjpeg-turbo's fast IDCT
    and chroma upsampling (training); False decodes as PIL does, to within a grey level (eval)."""
    factor = draft_factor(view, out_size) if draft else 1
    crop = _decode_crop_window(image, view, factor, fast) if image.fast and _jpegcrop is not None and use_crop_decode else None
    if crop is None:
        pixels = None
        if image.fast and simplejpeg is not None:
            pixels = _decode_simplejpeg(image, factor, fast)
        if pixels is None:
            pixels = _decode_pil(image, factor)
        full_w, full_h = image.size
        y0, y1 = _scaled_span(view.top, view.height, full_h, pixels.shape[0])
        x0, x1 = _scaled_span(view.left, view.width, full_w, pixels.shape[1])
        # A contiguous copy of just the crop: HWC memory is NCHW channels-last, the layout torch's
        # uint8 antialiased resize is vectorised for.
        crop = torch.from_numpy(np.array(pixels[y0:y1, x0:x1])).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(crop, size=(out_size, out_size), mode="bicubic", antialias=True)
    if view.flip:
        out = out.flip(-1)
    return out[0]  # (3, S, S), channels-last strides; batching makes it contiguous


def _decode_crop_window(image: EncodedImage, view: View, factor: int, fast: bool) -> torch.Tensor | None:
    """(1, 3, h, w) uint8 channels-last: only `view` decoded, at 1/factor scale; None when
    libjpeg-turbo refuses the data (strict, as simplejpeg: the whole-image decoders then decide)."""
    full_w, full_h = image.size
    # libjpeg's scaled size is ceil(size / factor), the same grid the whole-image path crops from.
    y0, y1 = _scaled_span(view.top, view.height, full_h, -(-full_h // factor))
    x0, x1 = _scaled_span(view.left, view.width, full_w, -(-full_w // factor))
    try:
        pixels = _jpegcrop.decode(image.data, factor, x0, y0, x1 - x0, y1 - y0, fast, use_restart_windows)
    except ValueError:
        return None
    image.decoded_by = "crop window"
    # HWC bytes are NCHW channels-last: no copy before the resize.
    return torch.frombuffer(pixels, dtype=torch.uint8).view(1, y1 - y0, x1 - x0, 3).permute(0, 3, 1, 2)


def _decode_simplejpeg(image: EncodedImage, factor: int, fast: bool = True) -> np.ndarray | None:
    """(H', W', 3) uint8 at 1/factor scale, or None when libjpeg-turbo refuses the data (strict
    mode: any warning, e.g. truncation or extraneous bytes, is a refusal; PIL then decides)."""
    width, height = image.size
    try:
        # libjpeg-turbo decodes at the smallest M/8 scale whose size is >= the minimum; asking for
        # ceil(size / factor) yields exactly 1/factor.
        pixels = simplejpeg.decode_jpeg(
            image.data, colorspace="RGB", fastdct=fast, fastupsample=fast,
            min_height=-(-height // factor), min_width=-(-width // factor),
        )
    except ValueError:
        return None
    image.decoded_by = "simplejpeg"
    return pixels


def _decode_pil(image: EncodedImage, factor: int) -> np.ndarray:
    pil = image.pil
    full_w, full_h = pil.size
    if factor > 1 and pil.format == "JPEG":
        # PIL picks the largest scale whose result is >= the requested size: asking for
        # size // factor yields exactly 1/factor.
        pil.draft("RGB", (full_w // factor, full_h // factor))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")  # greyscale, CMYK and palette images; decodes as a side effect
    image.decoded_by = "pil"
    return np.asarray(pil)  # (H', W', 3), decoded here; read-only


def _scaled_span(start: int, length: int, full: int, decoded: int) -> tuple[int, int]:
    """[start, start + length) in original pixels, mapped onto an axis decoded at `decoded` pixels."""
    scale = decoded / full
    lo = min(int(round(start * scale)), decoded - 1)
    hi = max(min(int(round((start + length) * scale)), decoded), lo + 1)
    return lo, hi
