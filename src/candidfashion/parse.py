"""The garment parser at serving time: an ONNX model run with ONNX Runtime (no torch).

``Parser.parse(image)`` returns a label map of taxonomy ids at the photo's own resolution.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import onnxruntime as ort

from candidfashion.taxonomy import CLASSES

if TYPE_CHECKING:
    from candidfashion.config import Settings

log = logging.getLogger(__name__)


class ModelSourceError(ValueError):
    """A model source can't be found, fetched or loaded."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_model_source(source: str, cache_dir: Path) -> Path:
    """A local path for a model source.

    Accepts a local path, ``file://``, any fsspec URI (``s3://bucket/key.onnx``, ``gs://``,
    ``http(s)://``) and MLflow registry URIs ``models:/name/version`` (or ``runs:/...``).
    Remote files are copied into ``cache_dir`` once, named by a hash of the URI.
    """
    if source.startswith(("models:/", "runs:/")):
        try:
            import mlflow
        except ImportError as err:
            raise ModelSourceError(f"{source}: loading from MLflow needs mlflow installed") from err
        dest = cache_dir / "mlflow" / hashlib.sha256(source.encode()).hexdigest()[:16]
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest))
            )
        except Exception as err:  # mlflow raises many types; all mean "not there"
            raise ModelSourceError(f"{source}: {err}") from err
        candidates = [local] if local.is_file() else sorted(local.rglob("*.onnx"))
        if not candidates:
            raise ModelSourceError(f"{source}: no .onnx file in the MLflow model")
        return candidates[0]
    if source.startswith("file://"):
        source = source[len("file://") :]
    if "://" not in source:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"model file not found: {path}")
        return path
    import fsspec

    dest = cache_dir / "remote" / (hashlib.sha256(source.encode()).hexdigest()[:16] + ".onnx")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".part")
        try:
            with fsspec.open(source, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        except Exception as err:  # fsspec backends raise their own types
            tmp.unlink(missing_ok=True)
            raise ModelSourceError(f"{source}: {err}") from err
        tmp.replace(dest)
    return dest


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads otherwise spin on the CPU, which starves concurrent requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ModelSourceError(f"{path}: not a loadable ONNX model ({err})") from err


@dataclass(frozen=True)
class LoadedModel:
    """An ONNX model resolved, hashed and opened, with its CandidFashion metadata."""

    path: Path
    sha256: str
    session: ort.InferenceSession
    meta: dict[str, str]
    input_size: tuple[int, int]  # (W, H) the model expects


def _input_size(
    source: str, session: ort.InferenceSession, meta: dict[str, str]
) -> tuple[int, int]:
    # Exported models record it; otherwise a fixed input shape says it.
    if "candidfashion.input_size" in meta:
        w, h = (int(v) for v in meta["candidfashion.input_size"].split("x"))
        return w, h
    shape = session.get_inputs()[0].shape
    if isinstance(shape[2], int) and isinstance(shape[3], int):
        return shape[3], shape[2]
    raise ModelSourceError(f"{source}: input size unknown (no metadata, dynamic shape)")


def open_model(source: str, kind: str, threads: int, cache_dir: Path | None) -> LoadedModel:
    """Resolve, hash and open a model; refuse one whose metadata names another ``kind``."""
    cache = cache_dir or Path.home() / ".cache" / "candidfashion"
    path = resolve_model_source(source, cache)
    session = make_session(path, threads)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    found = meta.get("candidfashion.kind", kind)
    if found != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ModelSourceError(f"{source} is a {found} model, not {article} {kind}")
    return LoadedModel(path, file_sha256(path), session, meta, _input_size(source, session, meta))


@dataclass(frozen=True)
class Letterbox:
    """Where a photo sits inside the model's input after an aspect-preserving resize."""

    scale: float
    width: int  # resized photo size inside the input
    height: int


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Fit ``image`` into (W, H) keeping its aspect ratio, top-left aligned, padded with black."""
    w_in, h_in = size
    h, w = image.shape[:2]
    scale = min(w_in / w, h_in / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = np.zeros((h_in, w_in, 3), dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=interp)
    return canvas, Letterbox(scale, nw, nh)


def planes_to_photo(planes: np.ndarray, shape: tuple[int, int]) -> list[np.ndarray]:
    """Resize each (H, W) plane of a (C, H, W) array to the photo's (h, w), bilinearly."""
    h, w = shape
    return [cv2.resize(plane, (w, h), interpolation=cv2.INTER_LINEAR) for plane in planes]


def argmax_planes(planes: list[np.ndarray]) -> np.ndarray:
    """Index of the largest plane per pixel; a running max over contiguous planes is several
    times faster than ``argmax`` over the last axis of an (H, W, C) array."""
    best = planes[0].copy()
    labels = np.zeros(best.shape, dtype=np.uint8)
    for c, plane in enumerate(planes[1:], start=1):
        better = plane > best
        labels[better] = c
        np.maximum(best, plane, out=best)
    return labels


class Parser:
    """Garment parser loaded once and shared; safe to call from several threads."""

    def __init__(
        self,
        source: str,
        threads: int = 2,
        cache_dir: Path | None = None,
        *,
        flip: bool = False,
    ):
        self.source = source
        self.flip = flip
        model = open_model(source, "parser", threads, cache_dir)
        self.path, self.sha256, self.session = model.path, model.sha256, model.session
        meta = model.meta
        classes = json.loads(meta.get("candidfashion.classes", json.dumps(list(CLASSES))))
        if list(classes) != list(CLASSES):
            raise ModelSourceError(f"{source} predicts {classes}, not this taxonomy")
        self.input_size = w, h = model.input_size
        self.input_name = self.session.get_inputs()[0].name
        self._lock = threading.Lock()  # ORT sessions are thread-safe; this only guards stats
        log.info("parser loaded: %s (sha256 %s, input %dx%d)", self.path, self.sha256[:12], w, h)

    @classmethod
    def from_settings(cls, settings: Settings) -> Parser:
        return cls(
            settings.parser_model,
            threads=settings.threads,
            cache_dir=settings.data_dir / "models",
            flip=settings.parser_flip,
        )

    def model_logits(self, image: np.ndarray) -> np.ndarray:
        """Class scores (C, h, w) at model resolution, cropped to where the photo sits."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("parser input must be an HxWx3 uint8 RGB array")
        canvas, box = letterbox(image, self.input_size)
        batch = canvas.transpose(2, 0, 1)[None].astype(np.float32)
        if self.flip:
            # The mirrored canvas rides in the same call (the batch axis is dynamic).
            batch = np.concatenate([batch, batch[..., ::-1]])
        (out,) = self.session.run(None, {self.input_name: batch})
        scores = out[0] if not self.flip else (out[0] + out[1][..., ::-1]) / 2
        return np.ascontiguousarray(scores[:, : box.height, : box.width])

    def parse_with_confidence(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels and the winning class's softmax probability, both at photo resolution.

        Labels come from logits upsampled to the photo (crisp edges); confidence is computed
        at model resolution and then resized, since it is only averaged over items.
        """
        logits = self.model_logits(image)
        labels = argmax_planes(planes_to_photo(logits, image.shape[:2]))
        shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
        small = (1.0 / shifted.sum(axis=0)).astype(np.float32)
        h, w = image.shape[:2]
        confidence = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return labels, confidence

    def parse(self, image: np.ndarray) -> np.ndarray:
        """Taxonomy ids (H, W) uint8 at the photo's resolution."""
        return argmax_planes(planes_to_photo(self.model_logits(image), image.shape[:2]))
