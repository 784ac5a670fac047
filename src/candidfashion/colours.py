"""Shopper-facing colour names, colour distance, and the dominant colours of an item.

Colours are compared in CIE Lab (D65, sRGB primaries) with the CIEDE2000 difference,
which tracks perceived difference far better than Euclidean Lab (CIE76) for the dark,
desaturated colours clothes mostly have (navy vs black, olive vs brown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


class ColourError(ValueError):
    """An unknown colour name or unusable pixel array."""


@dataclass
class Colour:
    name: str  # nearest palette name
    hex: str  # the measured colour, "#rrggbb"
    lab: tuple[float, float, float]  # the measured colour in CIE Lab
    fraction: float  # share of the item's pixels


# Representative garment colours, not pure primaries: "black" clothes photograph as a dark
# grey and "white" ones as an off-white, so nearest-name lookups land on the right word.
_PALETTE_HEX: dict[str, str] = {
    "black": "#1c1c1e",
    "charcoal": "#3f4146",
    "grey": "#8a8a8c",
    "silver": "#c4c5c8",
    "white": "#f4f4f2",
    "cream": "#efe6cf",
    "beige": "#d6c4a4",
    "khaki": "#b3a272",
    "camel": "#b98a55",
    "brown": "#6a4530",
    "burgundy": "#74202e",
    "red": "#c41e2e",
    "pink": "#ee9fb4",
    "orange": "#ea7a24",
    "yellow": "#f0cf3a",
    "olive": "#6b6a35",
    "green": "#2f8a4a",
    "teal": "#1f7c80",
    "light blue": "#a9c6e4",
    "denim blue": "#5c7fa6",
    "blue": "#2855b0",
    "navy": "#1f2a44",
    "purple": "#6a3f92",
}


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# sRGB (linear) -> XYZ, D65 white point.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (L 0..100) of uint8 RGB values of shape (..., 3)."""
    arr = np.asarray(rgb)
    if arr.shape[-1:] != (3,):
        raise ColourError(f"expected RGB values with a last axis of 3, got shape {arr.shape}")
    lin = _srgb_to_linear(arr.astype(np.float64) / 255.0)
    xyz = lin @ _RGB_TO_XYZ.T / _WHITE_D65
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    lab = np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """uint8 sRGB of CIE Lab values of shape (..., 3), clipped to the gamut."""
    arr = np.asarray(lab, dtype=np.float64)
    fy = (arr[..., 0] + 16) / 116
    fx = fy + arr[..., 1] / 500
    fz = fy - arr[..., 2] / 200
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(f**3 > eps, f**3, (116 * f - 16) / kappa) * _WHITE_D65
    lin = np.clip(xyz @ np.linalg.inv(_RGB_TO_XYZ).T, 0.0, 1.0)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(np.round(srgb * 255), 0, 255).astype(np.uint8)


def _hex_to_rgb(value: str) -> tuple[int, int, int]:
    v = value.lstrip("#")
    return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)


def rgb_to_hex(rgb: np.ndarray | tuple[int, int, int]) -> str:
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


#: Palette names in display order.
COLOUR_NAMES: tuple[str, ...] = tuple(_PALETTE_HEX)
#: name -> Lab of the palette colour.
PALETTE_LAB: dict[str, tuple[float, float, float]] = {
    name: tuple(float(v) for v in rgb_to_lab(np.array(_hex_to_rgb(h))))  # type: ignore[misc]
    for name, h in _PALETTE_HEX.items()
}
#: name -> "#rrggbb" of the palette colour, for swatches in the UI.
PALETTE_HEX: dict[str, str] = dict(_PALETTE_HEX)
_PALETTE_ARRAY = np.array([PALETTE_LAB[n] for n in COLOUR_NAMES])


def _normalise_name(name: str) -> str:
    return " ".join(name.strip().lower().replace("-", " ").replace("_", " ").split()).replace(
        "gray", "grey"
    )


def colour_lab(name: str) -> tuple[float, float, float]:
    """Lab of a palette colour name (case, hyphens and US 'gray' are forgiven)."""
    key = _normalise_name(name) if isinstance(name, str) else ""
    if key not in PALETTE_LAB:
        raise ColourError(f"unknown colour {name!r}; expected one of {', '.join(COLOUR_NAMES)}")
    return PALETTE_LAB[key]


def delta_e_array(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference, broadcasting over leading axes of (..., 3) arrays."""
    a = np.asarray(lab1, dtype=np.float64)
    b = np.asarray(lab2, dtype=np.float64)
    l1, a1, b1 = a[..., 0], a[..., 1], a[..., 2]
    l2, a2, b2 = b[..., 0], b[..., 1], b[..., 2]
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    dlp = l2 - l1
    dcp = c2p - c1p
    chroma_zero = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chroma_zero, 0.0, dh)
    dhp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    lp_mean = (l1 + l2) / 2
    cp_mean = (c1p + c2p) / 2
    hsum = h1p + h2p
    hp_mean = np.where(
        np.abs(h1p - h2p) <= 180, hsum / 2, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)
    )
    hp_mean = np.where(chroma_zero, hsum, hp_mean)
    t = (
        1
        - 0.17 * np.cos(np.radians(hp_mean - 30))
        + 0.24 * np.cos(np.radians(2 * hp_mean))
        + 0.32 * np.cos(np.radians(3 * hp_mean + 6))
        - 0.20 * np.cos(np.radians(4 * hp_mean - 63))
    )
    d_theta = 30 * np.exp(-(((hp_mean - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_mean**7 / (cp_mean**7 + 25.0**7))
    s_l = 1 + 0.015 * (lp_mean - 50) ** 2 / np.sqrt(20 + (lp_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt(
        (dlp / s_l) ** 2 + (dcp / s_c) ** 2 + (dhp / s_h) ** 2 + r_t * (dcp / s_c) * (dhp / s_h)
    )


def delta_e(lab1: tuple[float, float, float], lab2: tuple[float, float, float]) -> float:
    """CIEDE2000 difference of two Lab colours (about 1 is just noticeable, >10 is distinct)."""
    return float(delta_e_array(np.asarray(lab1), np.asarray(lab2)))


def nearest_name(lab: tuple[float, float, float] | np.ndarray) -> str:
    """The palette name closest (CIEDE2000) to a Lab colour."""
    d = delta_e_array(np.asarray(lab, dtype=np.float64)[None, :], _PALETTE_ARRAY)
    return COLOUR_NAMES[int(np.argmin(d))]


#: Pixels sampled for k-means; more adds time, not accuracy.
_MAX_SAMPLES = 10_000
#: Clusters smaller than this share are noise (seams, shadows, a logo's edge).
_MIN_FRACTION = 0.05


def dominant_colours(rgb_pixels: np.ndarray, k: int = 3) -> list[Colour]:
    """The main colours of a set of pixels, largest share first.

    k-means (OpenCV, fixed seed, so the answer is the same every time) in Lab on at most
    10 000 evenly strided pixels; clusters that get the same palette name are merged, and
    clusters under 5 % of the pixels are dropped (fractions are of the kept pixels).
    """
    px = np.asarray(rgb_pixels)
    if px.ndim != 2 or px.shape[1] != 3:
        raise ColourError(f"expected an (N, 3) array of RGB pixels, got shape {px.shape}")
    if px.dtype != np.uint8:
        raise ColourError(f"expected uint8 RGB pixels, got {px.dtype}")
    if len(px) == 0:
        return []
    if k < 1:
        raise ColourError(f"k must be at least 1, got {k}")
    if len(px) > _MAX_SAMPLES:
        px = px[:: math.ceil(len(px) / _MAX_SAMPLES)]
    lab = rgb_to_lab(px).astype(np.float32)
    packed = (px[:, 0].astype(np.int32) << 16) | (px[:, 1].astype(np.int32) << 8) | px[:, 2]
    k_eff = min(k, len(np.unique(packed)))
    if k_eff == 1:
        labels: np.ndarray = np.zeros(len(lab), dtype=np.int32)
        centres: np.ndarray = lab.mean(axis=0, keepdims=True)
    else:
        cv2.setRNGSeed(12345)
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
        start = np.zeros((len(lab), 1), dtype=np.int32)  # unused with k-means++ seeding
        _, best, found = cv2.kmeans(lab, k_eff, start, criteria, 3, cv2.KMEANS_PP_CENTERS)
        labels = np.asarray(best, dtype=np.int32).ravel()
        centres = np.asarray(found)
    counts = np.bincount(labels, minlength=len(centres)).astype(np.float64)
    merged: dict[str, list[float]] = {}  # name -> [count, sum L, sum a, sum b]
    for idx, count in enumerate(counts):
        if count == 0:
            continue
        name = nearest_name(centres[idx])
        acc = merged.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        acc[0] += count
        acc[1:] = [s + float(c) * count for s, c in zip(acc[1:], centres[idx], strict=True)]
    kept = {n: a for n, a in merged.items() if a[0] / len(lab) >= _MIN_FRACTION} or merged
    total = sum(a[0] for a in kept.values())
    out = []
    for name, (count, *sums) in kept.items():
        mean_lab = np.array(sums) / count
        out.append(
            Colour(
                name=name,
                hex=rgb_to_hex(lab_to_rgb(mean_lab)),
                lab=(float(mean_lab[0]), float(mean_lab[1]), float(mean_lab[2])),
                fraction=float(count / total),
            )
        )
    out.sort(key=lambda c: -c.fraction)
    return out
