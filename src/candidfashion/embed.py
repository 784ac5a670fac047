"""Image embeddings for visual search: an ONNX model run with ONNX Runtime (no torch).

Queries are item cut-outs (RGBA, transparent around the garment) and catalog entries are
product photos (RGB, usually on a plain studio background). Both are brought to the same
look before embedding: the garment centred on white, filling a square.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from candidfashion.imageio import border_pixels, composite_on_white, near_colour
from candidfashion.parse import ModelSourceError, open_model

if TYPE_CHECKING:
    from candidfashion.config import Settings

log = logging.getLogger(__name__)

#: Border pixels within this many levels (any channel) of the background count as background.
BORDER_TOLERANCE = 14
#: The border is "near-uniform" when at least this share of it matches its median colour.
UNIFORM_SHARE = 0.9
#: Margin kept around a trimmed product, as a share of its larger side.
TRIM_MARGIN = 0.03


class EmbedError(ValueError):
    """An image the embedder cannot take."""


def _check_image(image: object, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise EmbedError(f"image {index}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise EmbedError(f"image {index}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise EmbedError(f"image {index}: expected HxWx3 RGB or HxWx4 RGBA, got {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise EmbedError(f"image {index}: {image.shape[1]}x{image.shape[0]} is too small")
    return image


def trim_uniform_border(rgb: np.ndarray, whiten: bool = True) -> np.ndarray:
    """Crop a product photo to its subject when the background is plain.

    The background colour is the median of the outermost 2-pixel frame; if most of the
    frame matches it, rows and columns that hold (almost) only background are cut off,
    keeping a small margin. With ``whiten``, background pixels connected to the frame are
    also set to white, so a studio shot on grey looks like a cut-out on white (the queries
    are cut-outs). Photos with busy borders are returned unchanged.
    """
    h, w = rgb.shape[:2]
    if h < 8 or w < 8:
        return rgb
    frame = border_pixels(rgb, 2).astype(np.int16)
    background = np.median(frame, axis=0)
    if (np.abs(frame - background).max(axis=1) <= BORDER_TOLERANCE).mean() < UNIFORM_SHARE:
        return rgb
    is_bg = near_colour(rgb, background, BORDER_TOLERANCE)  # 255 = background
    # A row or column is content when more than a sliver of it differs (JPEG noise doesn't).
    bg_per_row = cv2.reduce(is_bg, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel() // 255
    bg_per_col = cv2.reduce(is_bg, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel() // 255
    rows = np.flatnonzero(w - bg_per_row > max(2, 0.005 * w))
    cols = np.flatnonzero(h - bg_per_col > max(2, 0.005 * h))
    if len(rows) == 0 or len(cols) == 0:
        return rgb
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (y1 - y0) * (x1 - x0) < 0.01 * h * w:
        return rgb  # a speck on a blank image: nothing worth cropping to
    if whiten:
        # Background regions that touch the frame; enclosed ones (inside a handle, or a
        # garment that happens to match the backdrop) stay as they are.
        count, regions = cv2.connectedComponents(is_bg, connectivity=4)
        touches_frame = np.zeros(count, dtype=bool)
        touches_frame[regions[0]] = touches_frame[regions[-1]] = True
        touches_frame[regions[:, 0]] = touches_frame[regions[:, -1]] = True
        touches_frame[0] = False  # label 0 is the foreground
        outside = touches_frame.view(np.uint8)[regions]
        rgb = rgb.copy()
        # A masked copy in OpenCV: boolean-mask assignment over 3 channels costs ten times more.
        cv2.copyTo(np.full_like(rgb, 255), outside, rgb)
    margin = round(TRIM_MARGIN * max(y1 - y0, x1 - x0))
    return rgb[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin]


def _crop_to_alpha(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3]
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    cols = np.flatnonzero(alpha.max(axis=0) > 0)
    if len(rows) == 0:
        return rgba  # fully transparent: embeds as a white square
    return rgba[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def square_on_white(rgb: np.ndarray, size: int) -> np.ndarray:
    """Letterbox an RGB image into a ``size`` x ``size`` white square, centred."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    canvas[y0 : y0 + nh, x0 : x0 + nw] = resized
    return canvas


def prepare(image: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` RGB uint8 square the embedder sees for one image.

    RGBA (cut-outs, transparent product shots): cropped to the opaque part, composited on
    white. RGB: plain borders trimmed. Then letterboxed on white.
    """
    image = _check_image(image, 0)
    if image.shape[2] == 4:
        rgb = composite_on_white(_crop_to_alpha(image))
    else:
        rgb = trim_uniform_border(image)
    return square_on_white(rgb, size)


class Embedder:
    """Visual embedding model loaded once and shared; ONNX Runtime sessions are thread-safe."""

    def __init__(self, source: str, threads: int = 2, cache_dir: Path | None = None):
        self.source = source
        model = open_model(source, "embedder", threads, cache_dir)
        self.path, self.sha256, self.session = model.path, model.sha256, model.session
        meta = model.meta
        inp, outputs = self.session.get_inputs()[0], self.session.get_outputs()
        w, h = model.input_size
        if w != h:
            raise ModelSourceError(f"{source}: embedder input must be square, got {w}x{h}")
        self.input_size = w
        out_dim = outputs[0].shape[-1]
        self.dim = int(meta.get("candidfashion.dim", out_dim if isinstance(out_dim, int) else 0))
        if self.dim <= 0:
            raise ModelSourceError(f"{source}: embedding size unknown")
        self.input_name = inp.name
        self.output_name = outputs[0].name
        self.metadata = dict(meta)
        log.info("embedder loaded: %s (sha256 %s, dim %d)", self.path, self.sha256[:12], self.dim)

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        return cls(
            settings.embedder_model,
            threads=settings.threads,
            cache_dir=settings.data_dir / "models",
        )

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 unit vectors, one per image, computed in one ONNX Runtime run."""
        if isinstance(images, np.ndarray) and images.ndim in (2, 3):
            raise EmbedError("embed() takes a sequence of images; wrap a single image in a list")
        checked = [_check_image(img, i) for i, img in enumerate(images)]
        if not checked:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = np.stack([prepare(img, self.input_size) for img in checked])
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        out = np.asarray(out, dtype=np.float32).reshape(len(checked), -1)
        # The graph normalises already; renormalising guards models exported elsewhere.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
