"""iMaterialist Fashion 2020 (FGVC7, Kaggle) reader.

Folder layout, as the competition ships it::

    DIR/train.csv                 ImageId,EncodedPixels,Height,Width,ClassId,AttributesIds
    DIR/label_descriptions.json   {"categories": [{"id", "name", "supercategory", ...}], ...}
    DIR/train/<ImageId>.jpg

Each CSV row is one object mask, run-length encoded over the image in column-major
(top-to-bottom, then left-to-right) order as 1-indexed ``start length`` pairs. Categories are
mapped to the taxonomy through ``taxonomy.FASHIONPEDIA_TO_CLASS``.

Labelling choices (documented because they change what a model learns):

* Garment parts and decorations (sleeve, collar, pocket, zipper, bead, ...) map to ``None``
  and are not painted: the whole-garment mask underneath keeps its class.
* Whole objects are painted largest first, so a smaller object lying on top of a larger one
  (a bag in front of a dress, a belt on trousers) keeps its own pixels.
* iMaterialist labels clothing only: there is no person, skin, hair or background label. Every
  pixel no garment covers is therefore **ignore (255)** by default, not background: marking it
  background would teach the parser that skin and hair are background. Pass
  ``unlabelled=0`` to get the biased "everything else is background" masks instead.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from candidfashion.datasets.ccp import DatasetError
from candidfashion.datasets.common import load_photo_for, paint_largest_first
from candidfashion.taxonomy import FASHIONPEDIA_TO_CLASS, lookup_table

COMPETITION = "imaterialist-fashion-2020-fgvc7"
IGNORE = 255
_REQUIRED_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "ClassId")


class DownloadError(DatasetError):
    """A data set could not be downloaded (missing tool, credentials, network or bad file)."""


def rle_decode(encoded: str, height: int, width: int) -> np.ndarray:
    """Decode a Kaggle-style run-length string into an HxW bool mask.

    ``encoded`` is space-separated ``start length`` pairs; starts are 1-indexed positions in
    the column-major (Fortran-order) flattening of the image. An empty string is an empty mask.
    """
    if height <= 0 or width <= 0:
        raise DatasetError(f"mask size {height}x{width} must be positive")
    total = height * width
    try:
        values = np.array(encoded.split(), dtype=np.int64)
    except ValueError:
        raise DatasetError(f"run-length mask has non-integer values: {encoded[:60]!r}") from None
    if values.size % 2:
        raise DatasetError("run-length mask has an odd number of values (need start/length pairs)")
    starts, lengths = values[0::2] - 1, values[1::2]
    if values.size and (starts.min() < 0 or lengths.min() < 0):
        raise DatasetError("run-length mask has a start below 1 or a negative length")
    ends = starts + lengths
    if values.size and ends.max() > total:
        raise DatasetError(
            f"run-length mask runs past the end of a {height}x{width} image "
            f"({int(ends.max())} > {total} pixels)"
        )
    # +1 at each run start and -1 after each run end; a running sum marks covered pixels.
    edges = np.zeros(total + 1, np.int32)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    flat = np.cumsum(edges[:-1]) > 0
    return flat.reshape((width, height)).T


def rle_encode(mask: np.ndarray) -> str:
    """Encode an HxW mask (non-zero = set) as the column-major, 1-indexed run-length string."""
    if mask.ndim != 2:
        raise DatasetError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate(([0], flat, [0]))))
    starts, ends = changes[0::2], changes[1::2]
    pairs = np.empty(starts.size * 2, np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))


def _read_categories(path: Path) -> dict[int, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(
            f"{path}: not a label_descriptions.json with categories ({err})"
        ) from err


class IMaterialistDataset:
    """An iMaterialist Fashion 2020 folder (see the module docstring for the label policy).

    Only images that have a JPEG in ``train/`` and at least one whole-garment annotation are
    listed. ``train.csv`` is indexed by byte offset, so the 1+ GB file is never held in memory.
    """

    def __init__(
        self,
        root: str | Path,
        ids: list[str] | None = None,
        *,
        unlabelled: int = IGNORE,
        mapping: Mapping[str, str | None] = FASHIONPEDIA_TO_CLASS,
    ) -> None:
        self.root = Path(root)
        self.csv_path = self.root / "train.csv"
        self.images_dir = self.root / "train"
        labels = self.root / "label_descriptions.json"
        for needed in (self.csv_path, labels, self.images_dir):
            if not needed.exists():
                raise DatasetError(
                    f"{self.root} is not an iMaterialist Fashion 2020 folder: {needed.name} is "
                    f"missing (download it with download_imaterialist)"
                )
        if not 0 <= unlabelled <= 255:
            raise DatasetError(f"unlabelled must be a class id or 255, got {unlabelled}")
        self.unlabelled = unlabelled
        self.categories = _read_categories(labels)
        try:
            table = lookup_table(self.categories, mapping)
        except ValueError as err:
            raise DatasetError(f"{labels}: {err}") from err
        self._class_of: dict[int, int] = {cid: table[cid] for cid in self.categories}
        self._rows: dict[str, list[int]] = {}
        self._index_csv()
        available = sorted(i for i in self._rows if (self.images_dir / f"{i}.jpg").is_file())
        if ids is not None:
            missing = sorted(set(ids) - set(available))
            if missing:
                raise DatasetError(
                    f"{len(missing)} ids not in {self.root}: {', '.join(missing[:10])}"
                )
            wanted = set(ids)
            available = [i for i in available if i in wanted]
        self.ids: list[str] = available

    def _index_csv(self) -> None:
        """Record the byte offset of every row whose class is a whole garment, per image."""
        with open(self.csv_path, "rb") as fh:
            header_line = fh.readline()
            header = next(csv.reader([header_line.decode("utf-8-sig")]))
            missing = [c for c in _REQUIRED_COLUMNS if c not in header]
            if missing:
                raise DatasetError(f"{self.csv_path}: missing columns {', '.join(missing)}")
            self._columns = {name: i for i, name in enumerate(header)}
            # The shipped column order lets a line be split without parsing the long RLE field
            # through the csv module (RLE and the first five fields contain no commas or quotes).
            fast = tuple(header[:5]) == _REQUIRED_COLUMNS
            id_col, class_col = self._columns["ImageId"], self._columns["ClassId"]
            offset = len(header_line)
            for line in fh:
                start = offset
                offset += len(line)
                if not line.strip():
                    continue
                if fast:
                    fields = line.split(b",", 5)
                    if len(fields) < 5:
                        raise DatasetError(f"{self.csv_path}: short row at byte {start}")
                    image_id, class_text = fields[0].decode(), fields[4].decode()
                else:
                    row = next(csv.reader([line.decode("utf-8")]))
                    image_id, class_text = row[id_col], row[class_col]
                try:
                    class_id = int(class_text.split("_")[0])
                except ValueError:
                    raise DatasetError(
                        f"{self.csv_path}: ClassId {class_text!r} at byte {start} is not a number"
                    ) from None
                if class_id not in self._class_of:
                    raise DatasetError(
                        f"{self.csv_path}: ClassId {class_id} at byte {start} is not in "
                        "label_descriptions.json"
                    )
                # Rows for parts and decorations are never painted, so they are not indexed.
                if image_id and self._class_of[class_id] >= 0:
                    self._rows.setdefault(image_id, []).append(start)

    def __len__(self) -> int:
        return len(self.ids)

    def photo_path(self, image_id: str) -> Path:
        return self.images_dir / f"{image_id}.jpg"

    def _annotations(self, image_id: str) -> list[tuple[int, str, int, int]]:
        """(taxonomy id, rle, height, width) for each whole-garment row of ``image_id``."""
        if image_id not in self._rows:
            raise DatasetError(f"{image_id!r} has no annotations in {self.csv_path}")
        cols = self._columns
        out = []
        with open(self.csv_path, "rb") as fh:
            for offset in self._rows[image_id]:
                fh.seek(offset)
                row = next(csv.reader(io.StringIO(fh.readline().decode("utf-8"))))
                try:
                    class_id = int(row[cols["ClassId"]].split("_")[0])
                    height, width = int(row[cols["Height"]]), int(row[cols["Width"]])
                except (ValueError, IndexError) as err:
                    raise DatasetError(f"{self.csv_path}: bad row for {image_id}: {err}") from err
                out.append((self._class_of[class_id], row[cols["EncodedPixels"]], height, width))
        return out

    def mask(self, image_id: str) -> np.ndarray:
        """The taxonomy mask at the annotation's resolution (``unlabelled`` where no garment)."""
        anns = self._annotations(image_id)
        sizes = {(h, w) for _, _, h, w in anns}
        if len(sizes) != 1:
            raise DatasetError(f"{image_id}: rows disagree on the image size: {sorted(sizes)}")
        height, width = sizes.pop()
        decoded = [(cls, rle_decode(rle, height, width)) for cls, rle, _, _ in anns]
        return paint_largest_first(decoded, height, width, self.unlabelled)

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """RGB photo and taxonomy mask (255 = ignore), both at the photo's resolution."""
        mask = self.mask(image_id)
        return load_photo_for(image_id, self.photo_path(image_id), mask), mask


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a zip into ``dest``, refusing members that would land outside it."""
    dest = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (dest / member).resolve()
                if not target.is_relative_to(dest):
                    raise DownloadError(f"{archive}: member {member!r} escapes {dest}")
            zf.extractall(dest)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive} is not a valid zip file ({err})") from err


def download_imaterialist(
    dest: str | Path, *, kaggle: str = "kaggle", keep_zip: bool = False
) -> Path:
    """Download and unpack the competition data with the Kaggle CLI (about 20 GB).

    Needs internet, ``pip install kaggle``, an API token in ``~/.kaggle/kaggle.json`` (or the
    ``KAGGLE_USERNAME``/``KAGGLE_KEY`` environment variables) and the competition rules
    accepted once at https://www.kaggle.com/c/imaterialist-fashion-2020-fgvc7/rules. Returns
    ``dest``, ready for ``open_dataset("imaterialist:DEST")``.
    """
    exe = shutil.which(kaggle)
    if exe is None:
        raise DownloadError(
            f"the Kaggle command line tool ({kaggle!r}) is not installed or not on PATH: "
            "run `pip install kaggle` and put your API token in ~/.kaggle/kaggle.json"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "competitions", "download", "-c", COMPETITION, "-p", os.fspath(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-800:]
        raise DownloadError(
            f"`kaggle competitions download -c {COMPETITION}` failed "
            f"(exit {result.returncode}): {detail or 'no output'}. Check your token and that "
            "you accepted the competition rules."
        )
    archive = dest / f"{COMPETITION}.zip"
    if not archive.is_file():
        raise DownloadError(f"the Kaggle CLI finished but {archive} is not there")
    extract_archive(archive, dest)
    if not keep_zip:
        archive.unlink()
    for needed in ("train.csv", "label_descriptions.json", "train"):
        if not (dest / needed).exists():
            raise DownloadError(f"{archive} did not contain {needed}")
    return dest
