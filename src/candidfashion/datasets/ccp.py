"""Clothing Co-Parsing (CCP): ``photos/NNNN.jpg`` + ``annotations/pixel-level/NNNN.mat``.

Each ``.mat`` holds ``groundtruth`` (HxW uint8 fine-label indices); ``label_list.mat`` names
the 59 fine labels. Fine labels are mapped to the taxonomy with ``taxonomy.CCP_TO_CLASS``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from candidfashion.datasets.common import DatasetError, load_photo_for
from candidfashion.taxonomy import CCP_TO_CLASS, lookup_table

__all__ = ["CCPDataset", "DatasetError"]


def _loadmat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError as err:  # scipy comes with the [train] extra
        raise DatasetError("reading CCP .mat files needs scipy (pip install scipy)") from err
    try:
        return loadmat(str(path))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable MATLAB file ({err})") from err


class CCPDataset:
    """A CCP-format folder. Only photos that have a pixel-level annotation are listed."""

    def __init__(self, root: str | Path, ids: list[str] | None = None):
        self.root = Path(root)
        photos = self.root / "photos"
        annotations = self.root / "annotations" / "pixel-level"
        label_file = self.root / "label_list.mat"
        for needed in (photos, annotations, label_file):
            if not needed.exists():
                raise DatasetError(f"{self.root} is not a CCP folder: {needed.name} is missing")
        raw = _loadmat(label_file)["label_list"].ravel()
        self.fine_labels: list[str] = [str(np.asarray(x).ravel()[0]) for x in raw]
        self._table = np.array(
            [
                255 if t < 0 else t
                for t in lookup_table(dict(enumerate(self.fine_labels)), CCP_TO_CLASS)
            ],
            dtype=np.uint8,
        )
        available = sorted(
            p.stem for p in annotations.glob("*.mat") if (photos / f"{p.stem}.jpg").exists()
        )
        if ids is not None:
            missing = sorted(set(ids) - set(available))
            if missing:
                raise DatasetError(f"ids not in {self.root}: {', '.join(missing[:10])}")
            available = [i for i in available if i in set(ids)]
        self.ids = available

    def __len__(self) -> int:
        return len(self.ids)

    def photo_path(self, image_id: str) -> Path:
        return self.root / "photos" / f"{image_id}.jpg"

    def fine_mask(self, image_id: str) -> np.ndarray:
        """The fine-label map (indices into ``fine_labels``)."""
        data = _loadmat(self.root / "annotations" / "pixel-level" / f"{image_id}.mat")
        if "groundtruth" not in data:
            raise DatasetError(f"{image_id}.mat has no 'groundtruth' variable")
        gt = np.asarray(data["groundtruth"])
        if gt.ndim != 2 or gt.max(initial=0) >= len(self.fine_labels):
            raise DatasetError(
                f"{image_id}.mat: groundtruth has shape {gt.shape} or unknown labels"
            )
        return gt.astype(np.uint8)

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """RGB photo and taxonomy mask (255 = ignore), both at the photo's resolution."""
        mask = self._table[self.fine_mask(image_id)]
        return load_photo_for(image_id, self.photo_path(image_id), mask), mask
