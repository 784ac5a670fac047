"""Pieces every reader shares: painting instance masks and pairing a photo with its mask."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """A data set folder is missing files or has an unexpected format."""


def paint_largest_first(
    masks: Iterable[tuple[int, np.ndarray]], height: int, width: int, fill: int
) -> np.ndarray:
    """One label map from (class id, boolean mask) pairs.

    Larger masks are painted first, so smaller objects lying on top (a bag over a dress)
    keep their pixels.
    """
    ordered = sorted(masks, key=lambda item: -int(item[1].sum()))
    out = np.full((height, width), fill, np.uint8)
    for cls, m in ordered:
        out[m] = cls
    return out


def load_photo_for(image_id: str, photo: Path, mask: np.ndarray) -> np.ndarray:
    """The RGB photo for ``mask``; refuses a photo whose size differs from the annotation."""
    from candidfashion.imageio import load_image

    image = load_image(photo)
    if image.shape[:2] != mask.shape:
        raise DatasetError(
            f"{image_id}: annotation is {mask.shape[1]}x{mask.shape[0]} but the photo is "
            f"{image.shape[1]}x{image.shape[0]} ({photo.name})"
        )
    return image
