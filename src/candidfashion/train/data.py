"""Training data: photos preloaded at a working scale, augmented with albumentations."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from rich.progress import Progress

from candidfashion.datasets import SegmentationDataset
from candidfashion.taxonomy import NUM_CLASSES

log = logging.getLogger(__name__)
IGNORE = 255


def resize_pair(image: np.ndarray, mask: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale a photo and its mask to ``height`` rows, keeping the aspect ratio."""
    h, w = mask.shape
    width = max(1, round(w * height / h))
    img = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    msk = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return img, msk


def preload(
    datasets: Sequence[tuple[SegmentationDataset, list[str]]], height: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Decode every photo once; training reads them from memory (decoding is slower than a step)."""
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    total = sum(len(ids) for _, ids in datasets)
    with Progress(transient=True) as progress:
        task = progress.add_task("loading photos", total=total)
        for ds, ids in datasets:
            for image_id in ids:
                img, msk = ds.load(image_id)
                img, msk = resize_pair(img, msk, height)
                images.append(img)
                masks.append(msk)
                progress.advance(task)
    return images, masks


def class_weights(masks: Sequence[np.ndarray], power: float = 0.5) -> np.ndarray:
    """Inverse-frequency weights (softened by ``power``), normalised to mean 1.

    Rare classes (hat, bag, shorts) would otherwise be swamped by background and skin.
    """
    counts = np.zeros(NUM_CLASSES, dtype=np.float64)
    for m in masks:
        counts += np.bincount(m[m != IGNORE].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    freq = counts / max(counts.sum(), 1.0)
    weights = np.where(freq > 0, (np.median(freq[freq > 0]) / np.maximum(freq, 1e-12)) ** power, 0)
    weights = np.clip(weights, 0.25, 6.0)
    return (weights / weights[freq > 0].mean()).astype(np.float32)


def repeat_factors(
    masks: Sequence[np.ndarray], threshold: float, min_pixels: int = 64
) -> np.ndarray:
    """Per-photo sampling weights that show photos of rare classes more often.

    Repeat-factor sampling (Gupta et al., LVIS, 2019): a class found in a fraction ``f`` of
    the photos gets ``r = max(1, sqrt(threshold / f))``, and a photo the largest ``r`` of
    the classes it holds (``min_pixels`` or more). CCP has shorts in 6 % of its photos and
    hats in 11 %, against tops in nearly all of them. Background, skin and hair are left out.
    """
    if not masks:
        return np.ones(0)
    present = np.zeros((len(masks), NUM_CLASSES), dtype=bool)
    for i, m in enumerate(masks):
        counts = np.bincount(m[m != IGNORE].ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
        present[i] = counts >= min_pixels
    present[:, :3] = False  # background, skin, hair: not products
    freq = present.mean(axis=0)
    class_repeat = np.where(freq > 0, np.sqrt(threshold / np.maximum(freq, 1e-12)), 1.0)
    class_repeat = np.maximum(class_repeat, 1.0)
    return np.array([class_repeat[row].max(initial=1.0) for row in present])


def train_augmentation(crop: tuple[int, int], base_height: int, infer_height: int) -> A.Compose:
    """Random scale around the inference scale, crop, flip, photometric noise.

    ``crop`` is (W, H). Photos are preloaded at ``base_height``; the parser sees photos at
    ``infer_height``, so scales are centred on that ratio.
    """
    width, height = crop
    ratio = infer_height / base_height
    return A.Compose(
        [
            A.RandomScale(scale_limit=(ratio * 0.75 - 1, min(ratio * 1.3, 1.0) - 1), p=1.0),
            A.Affine(
                rotate=(-8, 8), p=0.3, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE
            ),
            A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE),
            A.RandomCrop(height, width),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.04, p=0.8),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=5)], p=0.15),
            A.ToGray(p=0.05),
        ]
    )


class AugmentedDataset(torch.utils.data.Dataset):
    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], transform: A.Compose):
        self.images, self.masks, self.transform = images, masks, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transform(image=self.images[i], mask=self.masks[i])
        image = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1).float()
        return image, torch.from_numpy(np.ascontiguousarray(out["mask"])).long()
