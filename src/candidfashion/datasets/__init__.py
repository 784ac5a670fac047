"""Readers for labelled garment-segmentation data, all mapped to ``candidfashion.taxonomy``.

A spec names the format and the location: ``ccp:DIR``, ``imaterialist:DIR`` or
``coco:ANNOTATIONS.json[:IMAGES_DIR]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from candidfashion.datasets.ccp import CCPDataset, DatasetError

__all__ = ["CCPDataset", "DatasetError", "SegmentationDataset", "open_dataset", "read_ids"]


class SegmentationDataset(Protocol):
    ids: list[str]

    def __len__(self) -> int: ...

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]: ...


def read_ids(path: str | Path) -> list[str]:
    """One id per line; blank lines and ``#`` comments ignored."""
    lines = Path(path).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def open_dataset(spec: str, ids: list[str] | None = None) -> SegmentationDataset:
    kind, sep, location = spec.partition(":")
    if not sep or not location:
        raise DatasetError(
            f"data spec {spec!r} must look like ccp:DIR, imaterialist:DIR or coco:FILE"
        )
    kind = kind.lower()
    if kind == "ccp":
        return CCPDataset(location, ids=ids)
    if kind == "imaterialist":
        from candidfashion.datasets.imaterialist import IMaterialistDataset

        return IMaterialistDataset(location, ids=ids)
    if kind == "coco":
        from candidfashion.datasets.coco import CocoDataset

        ann, _, images = location.partition(":")
        return CocoDataset(ann, images or None, ids=ids)
    raise DatasetError(f"unknown data format {kind!r}; expected ccp, imaterialist or coco")
