"""The one image reader: training, evaluation, prediction, visualisation and the ONNX predictor all
read files through :func:`read_image`, so a picture means the same thing everywhere.

The formats read are those the documentation names (:data:`FORMATS`: JPEG, PNG, WebP, TIFF, BMP, GIF and
PPM), told by the file's contents: a file of another kind is refused whatever its name (a PostScript file
named ``.jpg`` would reach Pillow's EPS reader, which runs Ghostscript). Sizes come from the file's header and
are checked before anything is decoded: at most :data:`MAX_PIXELS` pixels are decoded (a larger JPEG is decoded
at 1/2, 1/4 or 1/8 scale, as its format allows; other formats are refused), and an image more than
:data:`MAX_ASPECT` times longer than wide is refused (resizing its shorter side for a model would make it
huge). Images are returned as RGB the way a person sees them: EXIF rotation applied, transparency composited
over white, palette, CMYK and grey converted, 16-bit and float images rescaled (not clipped) to 8 bits.
Imports neither torch nor timm.
"""

from __future__ import annotations

import io
import os
import warnings
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageFileError, InputSizeError

# Pillow's names of the formats read (MPO, the multi-picture JPEG of phones, opens as JPEG)
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "PPM")
FORMAT_NAMES = "JPEG, PNG, WebP, TIFF, BMP, GIF or PPM"
MAX_PIXELS = 50_000_000  # decoded at most (about 150 MB as RGB): 8000 x 6000 photos whole, a 200 MP JPEG at 1/2
MAX_ASPECT = 100  # longer side / shorter side: beyond it, no picture a model can read (a 4 megapixel x 1 strip)

# Pillow warns from 89 MP (and refuses from 179 MP) on its own; the limits above refuse or reduce such images
# before they are decoded, so its warning would only repeat them (and reach a progress bar as a Python warning)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@cache
def image_suffixes() -> frozenset[str]:
    """Lower-case file suffixes of the formats read (``.jpg``, ``.webp``, ``.tif`` ...)."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in FORMATS and fmt in Image.OPEN)


def is_image_name(name: str | os.PathLike) -> bool:
    """True when the file name has the suffix of a format read (:data:`FORMATS`)."""
    return Path(name).suffix.lower() in image_suffixes()


# leading bytes of the formats users mostly have, to tell a cut-off image from a file that is no image at all
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
# where a complete file of the format ends: JPEG's end-of-image marker (cameras may pad after it), PNG's IEND
_END = {"JPEG": (b"\xff\xd9", 4096), "PNG": (b"IEND\xaeB`\x82", 12)}


def _format_of(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def file_problem(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` cannot be a whole image, as words that follow "is", from its size and its first
    and last bytes (no decoding): empty, or a JPEG / PNG cut off before its end marker; None when nothing shows."""
    with open(path, "rb") as f:
        head = f.read(16)
        if not head:
            return "empty (0 bytes)"
        fmt = _format_of(head)
        if fmt not in _END:
            return None
        marker, window = _END[fmt]
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - window))
        if marker not in f.read(window):
            return f"a truncated {fmt} ({size} bytes, no end marker)"
    return None


def read_image(
    source: str | os.PathLike | bytes | BinaryIO, name: str | os.PathLike | None = None, upright: bool = True
) -> Image.Image:
    """Decode an image file (a path, its bytes or an open binary file) as an RGB image, turned upright by
    its EXIF orientation unless ``upright`` is False (dense annotations address the stored pixels).

    Raises :class:`ImageFileError` naming the file (``name``, default the path) when it is not an
    image Pillow reads, or is truncated or corrupt.
    """
    label = name if name is not None else source if isinstance(source, (str, os.PathLike)) else "image"
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source, formats=FORMATS) as im:
            limit_decode(im, label)
            im.load()  # decode now: a truncated file fails here, not later inside a transform
            return to_rgb(ImageOps.exif_transpose(im) if upright else im)
    except ImageFileError:
        raise
    except UnidentifiedImageError:
        raise ImageFileError(_unidentified(source, label)) from None
    except Image.DecompressionBombError as e:  # beyond Pillow's own limit, checked when it opens a file
        size = str(e).split(", could be")[0]
        raise ImageFileError(f"{label} is too large to decode ({size}): resize it first") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        problem = file_problem(source) if isinstance(source, (str, os.PathLike)) else None
        if problem:  # said plainly where the file shows it (Pillow's own words are about its reader)
            raise ImageFileError(f"{label} is {problem}: replace it with a complete copy") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageFileError(f"{label} could not be decoded ({reason}): the file is truncated or corrupt") from None


def limit_decode(im: Image.Image, label: str | os.PathLike) -> None:
    """Refuse, from the header's size alone, an image that cannot be decoded within :data:`MAX_PIXELS` or is
    more than :data:`MAX_ASPECT` times longer than wide; ask a JPEG over the limit for a reduced decode."""
    width, height = im.size
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageFileError(f"{label} is {width}x{height} pixels, one side more than {MAX_ASPECT} times the other: no "
                             "model input (resizing its shorter side would make it huge); crop it into tiles first")
    if width * height <= MAX_PIXELS:
        return
    scale = next((s for s in (2, 4, 8) if (width // s) * (height // s) <= MAX_PIXELS), None)
    if im.format == "JPEG" and scale is not None:
        im.draft(im.mode, (width // scale, height // scale))  # decoded at 1/scale by the JPEG decoder itself
        if im.size[0] * im.size[1] <= MAX_PIXELS:
            return
    raise ImageFileError(f"{label} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), more than the "
                         f"{MAX_PIXELS // 1_000_000} MP decoded at most (a JPEG up to {largest_jpeg() // 1_000_000} "
                         "MP is decoded at reduced scale): resize it first")


def largest_jpeg() -> int:
    """The most pixels a JPEG may have to be read (at 1/2 to 1/8 scale): 64 x :data:`MAX_PIXELS`, or less where
    Pillow itself refuses to open it (twice ``Image.MAX_IMAGE_PIXELS``: 178,956,970 by default)."""
    pillow = Image.MAX_IMAGE_PIXELS
    return 64 * MAX_PIXELS if pillow is None else min(64 * MAX_PIXELS, 2 * pillow)


def _unidentified(source, label) -> str:
    """Why Pillow could not tell what ``source`` is: empty, a known format cut off in its header, or not an image."""
    try:
        if hasattr(source, "read"):
            source.seek(0)
            head = source.read(16)
        else:
            with open(source, "rb") as f:
                head = f.read(16)
    except OSError:
        head = b"?"
    if not head:
        return f"{label} is empty (0 bytes): replace it with the image it should hold"
    fmt = _format_of(head)
    if fmt:
        return f"{label} is a truncated {fmt} file (it ends inside its header): replace it with a complete copy"
    return f"{label} is not a {FORMAT_NAMES} image (the formats read, told by the contents, not the name)"


def load_image(path: str | os.PathLike, min_side: int = 1) -> Image.Image:
    """:func:`read_image` of a file that must exist, with a shorter side of at least ``min_side`` pixels."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: check the path")
    return check_min_side(read_image(path), path, min_side)


def check_min_side(image: Image.Image, label: str | os.PathLike, min_side: int) -> Image.Image:
    """``image``, or an InputSizeError when its shorter side is under ``min_side`` pixels."""
    if min(image.size) < min_side:
        raise InputSizeError(
            f"{label} is {image.width}x{image.height} pixels, too small: the model needs a shorter side of "
            f"at least {min_side} px (one pixel per first-stage token); use a larger image"
        )
    return image


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: high bit depths rescaled, transparency over white."""
    if im.mode in _HIGH_DEPTH_MODES:
        # Pillow's convert clips 16-bit values at 255; rescale 0..65535 (or a float image in 0..1) instead
        arr = np.asarray(im, dtype=np.float32)
        if im.mode != "F":
            arr = arr / 257.0  # 0..65535 -> 0..255
        elif arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0  # a float image in 0..1
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
