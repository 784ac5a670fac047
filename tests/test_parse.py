"""The ONNX parser at serving time: letterboxing, label maps at photo resolution, model sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from builders import export_onnx_parser
from candidfashion.parse import (
    ModelSourceError,
    Parser,
    letterbox,
    resolve_model_source,
)
from candidfashion.taxonomy import CLASS_ID, CLASSES, NUM_CLASSES

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

INPUT_W, INPUT_H = 64, 96


class ColourParser(torch.nn.Module):
    """A parser whose answer is known: red pixels are 'top', green are 'pants', else background."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
        logits = torch.zeros(image.shape[0], NUM_CLASSES, *image.shape[2:])
        logits[:, CLASS_ID["background"] : CLASS_ID["background"] + 1] = 60.0
        logits[:, CLASS_ID["top"] : CLASS_ID["top"] + 1] = r - g - b
        logits[:, CLASS_ID["pants"] : CLASS_ID["pants"] + 1] = g - r - b
        return logits


def export_tiny(model, path: Path, kind: str = "parser", classes=CLASSES) -> Path:
    return export_onnx_parser(model, path, (INPUT_W, INPUT_H), kind=kind, classes=classes)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    return export_tiny(ColourParser(), tmp_path_factory.mktemp("parser") / "colour.onnx")


def two_tone(height: int, width: int) -> np.ndarray:
    """Red upper half, green lower half, grey border columns."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[: height // 2, 10:-10] = (220, 20, 20)
    image[height // 2 :, 10:-10] = (20, 220, 20)
    return image


def test_letterbox_keeps_aspect_and_pads() -> None:
    canvas, box = letterbox(np.full((100, 400, 3), 255, np.uint8), (64, 96))
    assert canvas.shape == (96, 64, 3)
    assert (box.width, box.height) == (64, 16)
    assert canvas[:16].min() == 255 and canvas[16:].max() == 0


@pytest.mark.parametrize("shape", [(832, 550), (300, 700), (97, 61)])
def test_parse_returns_labels_at_photo_resolution(colour_model: Path, shape) -> None:
    parser = Parser(str(colour_model), threads=1)
    h, w = shape
    labels, confidence = parser.parse_with_confidence(two_tone(h, w))
    assert labels.shape == (h, w) and labels.dtype == np.uint8
    assert confidence.shape == (h, w) and 0 < confidence.min() <= confidence.max() <= 1
    # Away from the boundaries every pixel has its colour's class.
    assert (labels[h // 8 : 3 * h // 8, w // 4 : 3 * w // 4] == CLASS_ID["top"]).all()
    assert (labels[5 * h // 8 : 7 * h // 8, w // 4 : 3 * w // 4] == CLASS_ID["pants"]).all()
    assert (labels[:, :4] == CLASS_ID["background"]).all()
    np.testing.assert_array_equal(parser.parse(two_tone(h, w)), labels)


class RampParser(torch.nn.Module):
    """Left-right asymmetric: 'top' wins on the right side of the canvas, background elsewhere."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0.0, 1.0, image.shape[-1]).expand(image.shape[0], 1, *image.shape[2:])
        logits = torch.zeros(image.shape[0], NUM_CLASSES, *image.shape[2:])
        logits[:, CLASS_ID["background"] : CLASS_ID["background"] + 1] = 1.0
        logits[:, CLASS_ID["top"] : CLASS_ID["top"] + 1] = 10.0 * ramp - 5.0
        return logits


def test_flip_averages_with_the_mirrored_photo(colour_model: Path, tmp_path: Path) -> None:
    ramp_model = export_tiny(RampParser(), tmp_path / "ramp.onnx")
    photo = np.full((2 * INPUT_H, 2 * INPUT_W, 3), 128, dtype=np.uint8)  # fills the canvas
    plain = Parser(str(ramp_model), threads=1).parse(photo)
    assert (plain[:, -INPUT_W // 2 :] == CLASS_ID["top"]).all()
    assert (plain[:, : INPUT_W // 2] == CLASS_ID["background"]).all()
    # Averaged with its mirror image the ramp cancels out: 'top' scores 0 < 1 everywhere.
    flipped = Parser(str(ramp_model), threads=1, flip=True).parse(photo)
    assert (flipped == CLASS_ID["background"]).all()
    # A mirror-symmetric model gives the same labels either way.
    image = two_tone(300, 200)
    np.testing.assert_array_equal(
        Parser(str(colour_model), threads=1, flip=True).parse(image),
        Parser(str(colour_model), threads=1).parse(image),
    )


def test_parser_reads_size_and_hash(colour_model: Path) -> None:
    parser = Parser(str(colour_model))
    assert parser.input_size == (INPUT_W, INPUT_H)
    assert len(parser.sha256) == 64


def test_parser_rejects_wrong_input(colour_model: Path) -> None:
    parser = Parser(str(colour_model))
    with pytest.raises(ValueError, match="RGB"):
        parser.parse(np.zeros((10, 10), np.uint8))


def test_parser_refuses_other_models(tmp_path: Path) -> None:
    embedder = export_tiny(ColourParser(), tmp_path / "e.onnx", kind="embedder")
    with pytest.raises(ModelSourceError, match="not a parser"):
        Parser(str(embedder))
    other = export_tiny(ColourParser(), tmp_path / "o.onnx", classes=[f"c{i}" for i in range(14)])
    with pytest.raises(ModelSourceError, match="taxonomy"):
        Parser(str(other))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelSourceError, match="ONNX"):
        Parser(str(junk))


def test_model_sources_local_file_uri_and_fsspec(colour_model: Path, tmp_path: Path) -> None:
    assert resolve_model_source(str(colour_model), tmp_path) == colour_model
    assert resolve_model_source(f"file://{colour_model}", tmp_path) == colour_model
    import fsspec

    with fsspec.open("memory://bucket/parser.onnx", "wb") as fh:
        fh.write(colour_model.read_bytes())
    local = resolve_model_source("memory://bucket/parser.onnx", tmp_path)
    assert local.read_bytes() == colour_model.read_bytes()
    assert Parser("memory://bucket/parser.onnx", cache_dir=tmp_path).input_size == (64, 96)
    with pytest.raises(ModelSourceError, match="not found"):
        resolve_model_source(str(tmp_path / "missing.onnx"), tmp_path)
    with pytest.raises(ModelSourceError):
        resolve_model_source("memory://bucket/missing.onnx", tmp_path)


@pytest.mark.slow
def test_model_source_mlflow_registry(colour_model: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    import mlflow
    import mlflow.onnx

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("test")
    with mlflow.start_run():
        mlflow.onnx.log_model(
            onnx.load(str(colour_model)), name="model", registered_model_name="test-parser"
        )
    parser = Parser("models:/test-parser/1", cache_dir=tmp_path / "cache")
    assert parser.input_size == (INPUT_W, INPUT_H)
    assert parser.parse(two_tone(80, 60))[15, 30] == CLASS_ID["top"]
    with pytest.raises(ModelSourceError):
        resolve_model_source("models:/no-such-model/7", tmp_path)


def test_shipped_parser_on_real_validation_photos(ccp_dir: Path) -> None:
    """The committed parser segments held-out CCP photos about as well as its card says."""
    from candidfashion.config import REPO_MODELS_DIR
    from candidfashion.datasets import CCPDataset, read_ids
    from candidfashion.evaluate import confusion_matrix, iou_from_confusion

    path = REPO_MODELS_DIR / "parser.onnx"
    if not path.exists():
        pytest.skip("models/parser.onnx is not in this checkout")
    parser = Parser(str(path))
    val_ids = read_ids(REPO_MODELS_DIR.parent / "splits" / "ccp_val.txt")[:6]
    dataset = CCPDataset(ccp_dir, ids=val_ids)
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for image_id in dataset.ids:
        image, truth = dataset.load(image_id)
        cm += confusion_matrix(parser.parse(image), truth, NUM_CLASSES)
    iou = iou_from_confusion(cm)
    assert np.trace(cm) / cm.sum() > 0.85
    assert iou[CLASS_ID["background"]] > 0.9
    assert iou[CLASS_ID["skin"]] > 0.5
