"""COCO-style instance annotations (Fashionpedia and similar) as semantic taxonomy masks.

Spec: ``coco:ANNOTATIONS.json[:IMAGES_DIR]``. ``IMAGES_DIR`` defaults to the folder holding the
JSON file; each image is ``IMAGES_DIR/<file_name>``. Masks may be polygons, uncompressed RLE
(``counts`` a list) or compressed RLE (``counts`` a string); all are decoded with pycocotools.
Category names are mapped with ``taxonomy.FASHIONPEDIA_TO_CLASS`` (or a mapping you pass).

The label policy is the one documented in :mod:`candidfashion.datasets.imaterialist`: parts
are not painted, larger objects are painted first so smaller ones on top keep their pixels,
and pixels no object covers are ignore (255) because these data sets have no skin, hair or
background labels.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from candidfashion.datasets.ccp import DatasetError
from candidfashion.datasets.common import load_photo_for, paint_largest_first
from candidfashion.datasets.imaterialist import IGNORE, DownloadError, extract_archive
from candidfashion.taxonomy import FASHIONPEDIA_TO_CLASS, lookup_table

#: Where the CVDF hosts Fashionpedia (https://github.com/cvdfoundation/fashionpedia).
FASHIONPEDIA_BASE_URL = "https://s3.amazonaws.com/ifashionist-dataset/"
FASHIONPEDIA_FILES: dict[str, str] = {
    "train_annotations": "annotations/instances_attributes_train2020.json",
    "val_annotations": "annotations/instances_attributes_val2020.json",
    "train_images": "images/train2020.zip",  # unpacks to train/
    "val_test_images": "images/val_test2020.zip",  # unpacks to test/
}
_CHUNK = 1 << 20


def _mask_api() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:  # pycocotools comes with the [train] extra
        raise DatasetError(
            "reading COCO masks needs pycocotools (pip install pycocotools)"
        ) from err
    return mask_utils


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode one COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to HxW bool."""
    mask_utils = _mask_api()
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list)]
        if len(polygons) != len(segmentation) or any(len(p) % 2 for p in polygons):
            raise DatasetError("a polygon must be a flat list of x, y pairs")
        # Fewer than three points encloses nothing (pycocotools would misread it as a box).
        polygons = [[float(v) for v in p] for p in polygons if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(v) for v in segmentation.get("size", ())]
        if size != [height, width]:
            raise DatasetError(f"RLE size {size} does not match the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise DatasetError("uncompressed RLE counts do not add up to height*width")
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str | bytes):
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise DatasetError(
                f"RLE counts must be a list or a string, not {type(counts).__name__}"
            )
    else:
        raise DatasetError("segmentation must be a polygon list or an RLE dict with 'counts'")
    try:
        return mask_utils.decode(rle).astype(bool)
    except Exception as err:  # pycocotools raises bare exceptions on corrupt strings
        raise DatasetError(f"cannot decode the RLE mask ({err})") from err


class CocoDataset:
    """Images with COCO instance annotations, served as semantic taxonomy masks.

    Ids are the COCO image ids as strings. Only images with at least one whole-object
    annotation (a category that maps to a taxonomy class) are listed.
    """

    def __init__(
        self,
        annotations: str | Path,
        images_dir: str | Path | None = None,
        ids: list[str] | None = None,
        *,
        unlabelled: int = IGNORE,
        mapping: Mapping[str, str | None] = FASHIONPEDIA_TO_CLASS,
    ) -> None:
        self.annotations_path = Path(annotations)
        if not self.annotations_path.is_file():
            raise DatasetError(f"COCO annotation file {self.annotations_path} does not exist")
        self.images_dir = Path(images_dir) if images_dir else self.annotations_path.parent
        if not self.images_dir.is_dir():
            raise DatasetError(f"images folder {self.images_dir} does not exist")
        if not 0 <= unlabelled <= 255:
            raise DatasetError(f"unlabelled must be a class id or 255, got {unlabelled}")
        self.unlabelled = unlabelled
        try:
            data = json.loads(self.annotations_path.read_text(encoding="utf-8"))
            categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            images: dict[str, dict[str, Any]] = {str(im["id"]): im for im in data["images"]}
            records: list[dict[str, Any]] = list(data["annotations"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DatasetError(
                f"{self.annotations_path}: not COCO instance annotations ({err})"
            ) from err
        self.categories = categories
        try:
            table = lookup_table(categories, mapping)
        except ValueError as err:
            raise DatasetError(f"{self.annotations_path}: {err}") from err
        self._class_of = {cid: table[cid] for cid in categories}
        self._images: dict[str, dict[str, Any]] = images
        self._anns: dict[str, list[dict[str, Any]]] = {}
        for ann in records:
            image_id, cat = str(ann.get("image_id")), ann.get("category_id")
            if image_id not in images:
                raise DatasetError(f"annotation {ann.get('id')} refers to unknown image {image_id}")
            if cat not in self._class_of:
                raise DatasetError(f"annotation {ann.get('id')} has unknown category {cat}")
            if self._class_of[cat] >= 0:
                self._anns.setdefault(image_id, []).append(ann)
        available = sorted(self._anns, key=_natural)
        if ids is not None:
            missing = sorted(set(ids) - set(available))
            if missing:
                raise DatasetError(
                    f"{len(missing)} ids not in {self.annotations_path}: {', '.join(missing[:10])}"
                )
            wanted = set(ids)
            available = [i for i in available if i in wanted]
        self.ids: list[str] = available

    def __len__(self) -> int:
        return len(self.ids)

    def photo_path(self, image_id: str) -> Path:
        return self.images_dir / str(self._images[image_id]["file_name"])

    def mask(self, image_id: str) -> np.ndarray:
        """The taxonomy mask at the annotated image size (``unlabelled`` where nothing is)."""
        if image_id not in self._images:
            raise DatasetError(f"image {image_id!r} is not in {self.annotations_path}")
        info = self._images[image_id]
        height, width = int(info["height"]), int(info["width"])
        decoded = [
            (
                self._class_of[a["category_id"]],
                segmentation_to_mask(a["segmentation"], height, width),
            )
            for a in self._anns.get(image_id, [])
        ]
        return paint_largest_first(decoded, height, width, self.unlabelled)

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """RGB photo and taxonomy mask (255 = ignore), both at the photo's resolution."""
        mask = self.mask(image_id)
        return load_photo_for(image_id, self.photo_path(image_id), mask), mask


def _natural(text: str) -> tuple[int, int | str]:
    """Sort numeric ids as numbers, others as text."""
    return (0, int(text)) if text.isdigit() else (1, text)


def download_file(url: str, dest: Path, *, timeout: float = 60.0, max_bytes: int) -> Path:
    """Stream ``url`` to ``dest``; refuse anything over ``max_bytes`` or shorter than announced.

    A file already at ``dest`` with the announced size is kept. Data lands in ``dest.part``
    first, so an interrupted download never leaves a plausible-looking file behind.
    """
    if not url.startswith(("https://", "http://")):
        raise DownloadError(f"only http(s) URLs can be downloaded, not {url!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # scheme checked above
            header = resp.headers.get("Content-Length")
            expected = int(header) if header and header.isdigit() else None
            if expected is not None and expected > max_bytes:
                raise DownloadError(f"{url} is {expected:,} bytes, over the {max_bytes:,} limit")
            if expected is not None and dest.is_file() and dest.stat().st_size == expected:
                return dest
            received = 0
            with open(partial, "wb") as fh:
                while chunk := resp.read(_CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DownloadError(f"{url} sent more than the {max_bytes:,} byte limit")
                    fh.write(chunk)
    except DownloadError:
        partial.unlink(missing_ok=True)
        raise
    except (OSError, http.client.HTTPException, urllib.error.URLError) as err:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"downloading {url} failed: {err}") from err
    if expected is not None and received != expected:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: got {received:,} of {expected:,} bytes (connection cut?)")
    if received == 0:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url} was empty")
    os.replace(partial, dest)
    return dest


def download_fashionpedia(
    dest: str | Path,
    parts: Iterable[str] = tuple(FASHIONPEDIA_FILES),
    *,
    base_url: str = FASHIONPEDIA_BASE_URL,
    timeout: float = 60.0,
    max_bytes: int = 20 * 1024**3,
    keep_zip: bool = False,
) -> dict[str, Path]:
    """Download Fashionpedia parts (see :data:`FASHIONPEDIA_FILES`) into ``dest``.

    Annotation files land as ``dest/<name>.json``; image zips are unpacked into ``dest``
    (``train/``, ``test/``) and deleted unless ``keep_zip``. Then, for example::

        open_dataset(f"coco:{dest}/instances_attributes_val2020.json:{dest}/test")

    Needs internet; the training images are about 3 GB.
    """
    dest = Path(dest)
    wanted = list(parts)
    unknown = [p for p in wanted if p not in FASHIONPEDIA_FILES]
    if unknown:
        raise DownloadError(
            f"unknown Fashionpedia parts {unknown}; choose from {', '.join(FASHIONPEDIA_FILES)}"
        )
    out: dict[str, Path] = {}
    for part in wanted:
        rel = FASHIONPEDIA_FILES[part]
        target = dest / Path(rel).name
        download_file(
            base_url.rstrip("/") + "/" + rel, target, timeout=timeout, max_bytes=max_bytes
        )
        if target.suffix == ".zip":
            extract_archive(target, dest)
            if not keep_zip:
                target.unlink()
            out[part] = dest
        else:
            with open(target, "rb") as fh:
                if fh.read(1) not in (b"{", b"["):
                    raise DownloadError(f"{target} is not JSON")
            out[part] = target
    return out
