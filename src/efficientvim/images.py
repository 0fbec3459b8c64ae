"""The one image reader: training, evaluation, prediction, visualisation and the ONNX predictor all
read files through :func:`read_image`, so a picture means the same thing everywhere.

Every format Pillow opens is accepted (JPEG, PNG, WebP, TIFF, BMP, GIF, ...). Images are returned
as RGB the way a person sees them: EXIF rotation applied, transparency composited over white,
palette, CMYK and grey converted, 16-bit and float images rescaled (not clipped) to 8 bits.
Imports neither torch nor timm.
"""

from __future__ import annotations

import io
import os
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageFileError, InputSizeError

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@cache
def image_suffixes() -> frozenset[str]:
    """Lower-case file suffixes of every format this Pillow can open (``.jpg``, ``.webp``, ``.tif`` ...)."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_image_name(name: str | os.PathLike) -> bool:
    """True when the file name has the suffix of a format Pillow opens."""
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
        with Image.open(source) as im:
            im.load()  # decode now: a truncated file fails here, not later inside a transform
            return to_rgb(ImageOps.exif_transpose(im) if upright else im)
    except UnidentifiedImageError:
        raise ImageFileError(_unidentified(source, label)) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        problem = file_problem(source) if isinstance(source, (str, os.PathLike)) else None
        if problem:  # said plainly where the file shows it (Pillow's own words are about its reader)
            raise ImageFileError(f"{label} is {problem}: replace it with a complete copy") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageFileError(f"{label} could not be decoded ({reason}): the file is truncated or corrupt") from None


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
    return f"{label} is not an image Pillow can read: use JPEG, PNG, WebP, TIFF, BMP or GIF"


def load_image(path: str | os.PathLike, min_side: int = 1) -> Image.Image:
    """:func:`read_image` of a file that must exist, with a shorter side of at least ``min_side`` pixels."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: check the path")
    image = read_image(path)
    if min(image.size) < min_side:
        raise InputSizeError(
            f"{path} is {image.width}x{image.height} pixels, too small: the model needs a shorter side of "
            f"at least {min_side} px (one pixel per first-stage token); use a larger image"
        )
    return image


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: high bit depths rescaled, transparency over white."""
    if im.mode in _HIGH_DEPTH_MODES:
        # Pillow's convert clips 16-bit values at 255; rescale 0..65535 (or a float image in 0..1) instead
        arr = np.asarray(im, dtype=np.float64)
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
