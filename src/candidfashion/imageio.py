"""Safe image loading for uploads, catalog images and data sets.

Every image that enters CandidFashion goes through :func:`load_image` (or
:func:`load_image_rgba` for product shots whose transparency matters). The checks run
cheapest first, so a hostile or broken file is refused before it costs memory:

1. byte size (``os.stat`` for paths, a bounded read for streams);
2. the container header (Pillow only parses the header in ``Image.open``), which gives the
   width and height: the pixel count is compared with ``max_pixels`` *before* decoding;
3. a strict full decode with truncated-file tolerance off, so half-uploaded JPEGs and PNGs
   are rejected instead of silently padded with grey;
4. EXIF orientation, then conversion of every colour mode to 8-bit RGB (or RGBA).

All refusals raise :class:`ImageError`, a ``ValueError`` with a machine-readable ``code``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import warnings
from typing import BinaryIO, Final

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Defaults used when a caller passes ``None``; the app passes its own settings instead.
DEFAULT_MAX_BYTES: Final = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS: Final = 40_000_000
#: A side shorter than this cannot hold a garment worth finding.
MIN_SIDE: Final = 8

# Only raster formats we expect from cameras, shops and data sets. Pillow can also open
# EPS (which runs Ghostscript) and other exotic formats that an upload has no business using.
_ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

# Magic numbers of the allowed formats: a file that starts like one but cannot be opened
# is a damaged image, not a different kind of file.
_SIGNATURES: Final = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
)

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

_strict_lock = threading.Lock()


class ImageError(ValueError):
    """An image that cannot or may not be loaded.

    ``code`` is one of ``"empty"``, ``"not_an_image"``, ``"truncated"``, ``"too_large"``
    (bytes), ``"too_many_pixels"``, ``"too_small"`` or ``"not_found"`` (a path that does
    not exist), so an API can map it to a status without parsing the message.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of some bytes (used to name uploads and identify models)."""
    return hashlib.sha256(data).hexdigest()


def _describe(source: object) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return "image"


def read_image_bytes(source: ImageSource, max_bytes: int | None = None) -> bytes:
    """The raw bytes of ``source``, refusing anything over ``max_bytes`` without reading it all."""
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    name = _describe(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise ImageError("not_found", f"{path}: no such file") from None
        except OSError as err:
            raise ImageError("not_found", f"{path}: cannot read ({err.strerror})") from None
        if os.path.isdir(path):
            raise ImageError("not_an_image", f"{path}: is a folder, not an image file")
        if size > limit:
            raise ImageError("too_large", f"{path}: {size:,} bytes is over the {limit:,} limit")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    elif hasattr(source, "read"):
        # One byte over the limit is enough to know it is too large.
        data = source.read(limit + 1)
        if not isinstance(data, bytes | bytearray):
            raise TypeError("the file object must be opened in binary mode")
        data = bytes(data)
    else:
        raise TypeError(f"cannot load an image from {type(source).__name__}")
    if len(data) > limit:
        raise ImageError("too_large", f"{name}: over the {limit:,} byte limit")
    if not data:
        raise ImageError("empty", f"{name}: the file is empty")
    return data


def _open_checked(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Open the header only and enforce the pixel budget before any decoding."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    Image.init()
    # MPO (multi-picture JPEG from phones) is opened by the JPEG plugin.
    formats: list[str] = [f for f in _ALLOWED_FORMATS if f in Image.OPEN]
    try:
        with warnings.catch_warnings():
            # We apply our own (stricter) limit just below; Pillow's warning is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as err:
        # Pillow itself refuses headers above twice Image.MAX_IMAGE_PIXELS (also before
        # decoding); its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(found.group(1)):,} pixels" if found else "the pixel count"
        raise ImageError(
            "too_many_pixels",
            f"{name}: {count} is over the {min(limit, 2 * (Image.MAX_IMAGE_PIXELS or 0)):,} limit",
        ) from None
    except UnidentifiedImageError:
        if data.startswith(_SIGNATURES):
            raise ImageError(
                "truncated", f"{name}: the image header is cut short or damaged"
            ) from None
        raise ImageError(
            "not_an_image",
            f"{name}: not a supported image (expected JPEG, PNG, WebP, GIF, BMP or TIFF)",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # A recognised format whose header is broken.
        raise ImageError(
            "truncated", f"{name}: truncated or damaged image header ({err})"
        ) from None
    width, height = im.size
    if width * height > limit:
        im.close()
        raise ImageError(
            "too_many_pixels",
            f"{name}: {width}x{height} = {width * height:,} pixels is over the {limit:,} limit",
        )
    if min(width, height) < MIN_SIDE:
        im.close()
        raise ImageError(
            "too_small", f"{name}: {width}x{height} is too small (each side needs {MIN_SIDE}+ px)"
        )
    return im


def _strict_load(im: Image.Image, name: str) -> None:
    """Decode fully, rejecting truncated files even if some library relaxed Pillow globally."""
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            with _strict_lock:
                saved = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                try:
                    im.load()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = saved
        else:
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(
            "truncated", f"{name}: the image data is truncated or corrupt ({err})"
        ) from None


def _apply_orientation(im: Image.Image, name: str) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(im)
    except Exception as err:  # malformed EXIF must not cost the user their photo
        log.warning("%s: ignoring unreadable EXIF orientation (%s)", name, err)
        return im
    return im if out is None else out


def _to_uint8_gray(im: Image.Image) -> Image.Image:
    """High-bit-depth single channel (I;16*, I, F) scaled - not clipped - to 8 bits."""
    arr = np.asarray(im)
    scaled: np.ndarray
    if im.mode.startswith("I;16"):
        scaled = (arr.astype(np.uint32) * 255 + 32767) // 65535
    elif im.mode == "I":
        # Pillow stores 16-bit PNG/TIFF data in 32-bit "I"; values past 255 mean 16-bit range.
        wide = np.clip(arr.astype(np.int64), 0, 65535)
        scaled = (wide * 255 + 32767) // 65535 if wide.max(initial=0) > 255 else wide
    else:  # "F": 0..1 floats if that is their range, else 0..255
        farr = np.nan_to_num(arr.astype(np.float64))
        if farr.max(initial=0.0) <= 1.0:
            farr = farr * 255.0
        scaled = np.clip(np.rint(farr), 0, 255)
    return Image.fromarray(scaled.astype(np.uint8))


def _to_rgba_or_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode to ``RGB`` or ``RGBA`` (only when there is transparency)."""
    mode = im.mode
    if mode in ("RGB", "RGBA"):
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _to_uint8_gray(im).convert("RGB")
    if mode in ("LA", "PA", "La", "RGBa"):
        return im.convert("RGBA")
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode in ("L", "1") and "transparency" in im.info:
        return im.convert("RGBA")
    # L, 1, CMYK (Pillow undoes Adobe's inverted CMYK on load), YCbCr, LAB, HSV, ...
    return im.convert("RGB")


def _decode(source: ImageSource, max_bytes: int | None, max_pixels: int | None) -> Image.Image:
    name = _describe(source)
    data = read_image_bytes(source, max_bytes)
    im = _open_checked(data, name, max_pixels)
    try:
        _strict_load(im, name)
        im = _apply_orientation(im, name)
        return _to_rgba_or_rgb(im)
    except ImageError:
        raise
    except (OSError, ValueError) as err:
        raise ImageError("truncated", f"{name}: cannot decode the image ({err})") from None


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Blend an HxWx4 uint8 image onto a white background, returning HxWx3 uint8."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    blended = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def border_pixels(rgb: np.ndarray, width: int) -> np.ndarray:
    """(N, 3) pixels of the outermost ``width``-pixel frame of an HxWx3 image."""
    return np.concatenate(
        [
            rgb[:width].reshape(-1, 3),
            rgb[-width:].reshape(-1, 3),
            rgb[:, :width].reshape(-1, 3),
            rgb[:, -width:].reshape(-1, 3),
        ]
    )


def near_colour(rgb: np.ndarray, colour: np.ndarray, tolerance: int) -> np.ndarray:
    """uint8 HxW mask, 255 where every channel is within ``tolerance`` of ``colour``.

    cv2.inRange does it in one pass; the same test in NumPy (an int16 copy, a difference
    and a max over channels) cost ten times more.
    """
    centre = np.asarray(colour).astype(np.int16)
    lower = np.clip(centre - tolerance, 0, 255).astype(np.uint8)
    upper = np.clip(centre + tolerance, 0, 255).astype(np.uint8)
    return cv2.inRange(np.ascontiguousarray(rgb), lower, upper)


def load_image(
    source: ImageSource, *, max_bytes: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Load an image as an HxWx3 uint8 RGB array, upright, with transparency on white.

    ``source`` is bytes, a path or a binary file object. ``max_bytes`` and ``max_pixels``
    default to :data:`DEFAULT_MAX_BYTES` and :data:`DEFAULT_MAX_PIXELS`. Raises
    :class:`ImageError` for anything that is empty, not an image, truncated, too large,
    has too many pixels or is smaller than :data:`MIN_SIDE` on a side.
    """
    im = _decode(source, max_bytes, max_pixels)
    arr = np.asarray(im)
    if im.mode == "RGBA":
        return composite_on_white(arr)
    return np.ascontiguousarray(arr)


def load_image_rgba(
    source: ImageSource, *, max_bytes: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Like :func:`load_image` but keeps transparency: HxWx4 uint8 (alpha 255 when opaque)."""
    im = _decode(source, max_bytes, max_pixels)
    if im.mode != "RGBA":
        im = im.convert("RGBA")
    return np.ascontiguousarray(np.asarray(im))
