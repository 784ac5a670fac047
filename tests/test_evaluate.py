"""Parser evaluation: metric functions, and a full run of a real ONNX model over a CCP folder.

The model is a 1x1 convolution exported from torch whose prediction depends only on the
pixel colour (red -> dress, blue -> pants, anything grey -> background), so every IoU below
is worked out by hand.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from builders import CCP_LABELS, export_onnx_parser, write_ccp
from candidfashion.config import Settings
from candidfashion.evaluate import (
    EvaluationError,
    confusion_matrix,
    evaluate_parser,
    iou_from_confusion,
    print_report,
    summarise,
)
from candidfashion.taxonomy import CLASS_ID, NUM_CLASSES

W, H = 48, 64  # photo size == model input size, so no resampling blurs the colour blocks


# --- metric functions -----------------------------------------------------------------------


def test_confusion_matrix_counts_and_ignores() -> None:
    target = np.array([[0, 1, 1], [2, 255, 2]], np.uint8)
    pred = np.array([[0, 1, 2], [2, 0, 0]], np.uint8)
    cm = confusion_matrix(pred, target, 3)
    expected = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm.sum() == 5  # the 255 pixel is not counted


def test_confusion_matrix_rejects_bad_input() -> None:
    with pytest.raises(EvaluationError, match="shape"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 3)
    with pytest.raises(EvaluationError, match="target has labels"):
        confusion_matrix(np.zeros((1, 2), np.uint8), np.array([[0, 7]], np.uint8), 3)
    with pytest.raises(EvaluationError, match="prediction has labels"):
        confusion_matrix(np.array([[0, 9]], np.uint8), np.zeros((1, 2), np.uint8), 3)


def test_confusion_matrix_matches_a_loop_on_random_maps() -> None:
    rng = np.random.default_rng(3)
    target = rng.integers(0, 5, (37, 23)).astype(np.uint8)
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 5, target.shape).astype(np.uint8)
    slow = np.zeros((5, 5), np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if t != 255:
            slow[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, target, 5), slow)


def test_iou_from_confusion() -> None:
    cm = np.array([[4, 1, 0], [2, 2, 0], [0, 0, 0]])
    iou = iou_from_confusion(cm)
    assert iou[0] == pytest.approx(4 / (5 + 6 - 4))
    assert iou[1] == pytest.approx(2 / (4 + 3 - 2))
    assert np.isnan(iou[2])


def test_summarise_excludes_absent_garments_from_garment_miou() -> None:
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    cm[CLASS_ID["top"], CLASS_ID["top"]] = 30
    cm[CLASS_ID["top"], CLASS_ID["pants"]] = 10  # pants predicted but never in the truth
    out = summarise(cm)
    assert out["per_class_iou"]["top"] == pytest.approx(0.75)
    assert out["per_class_iou"]["pants"] == 0.0
    assert out["per_class_iou"]["hat"] is None
    assert out["garment_miou"] == pytest.approx(0.75)  # pants not in truth: left out
    assert out["mean_iou"] == pytest.approx(0.375)  # but counted as a 0 in the mean IoU
    assert out["pixel_accuracy"] == pytest.approx(0.75)


# --- end to end with a real ONNX model ---------------------------------------------------------


def _colour_parser(path: Path) -> Path:
    """Export a 1x1 conv: logit(dress) = R - B, logit(pants) = B - R, background = 10."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    conv = torch.nn.Conv2d(3, NUM_CLASSES, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-100.0)
        conv.bias[CLASS_ID["background"]] = 10.0
        for cls, sign in (("dress", 1.0), ("pants", -1.0)):
            conv.weight[CLASS_ID[cls], 0, 0, 0] = sign
            conv.weight[CLASS_ID[cls], 2, 0, 0] = -sign
            conv.bias[CLASS_ID[cls]] = 0.0
    return export_onnx_parser(conv, path, (W, H))


@pytest.fixture
def ccp_folder(tmp_path: Path) -> Path:
    fine = {name: i for i, name in enumerate(CCP_LABELS)}
    # Photo 0001: red rows 0-31, blue rows 32-63. Truth: dress, pants, then skin (the model
    # calls the skin rows pants).
    rgb1 = np.zeros((H, W, 3), np.uint8)
    rgb1[:32] = (255, 0, 0)
    rgb1[32:] = (0, 0, 255)
    gt1 = np.full((H, W), fine["dress"], np.uint8)
    gt1[32:48] = fine["pants"]
    gt1[48:] = fine["skin"]
    # Photo 0002: all grey (model: background). Truth: background with a 16x16 hat.
    rgb2 = np.full((H, W, 3), 128, np.uint8)
    gt2 = np.full((H, W), fine["null"], np.uint8)
    gt2[8:24, 16:32] = fine["hat"]
    return write_ccp(tmp_path / "ccp", {"0001": (rgb1, gt1), "0002": (rgb2, gt2)})


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _colour_parser(tmp_path_factory.mktemp("model") / "colour_parser.onnx")


def test_evaluate_parser_numbers_by_hand(
    ccp_folder: Path, colour_model: Path, settings: Settings
) -> None:
    report = evaluate_parser(f"ccp:{ccp_folder}", str(colour_model), None, settings, progress=False)
    assert report["num_images"] == 2 and report["skipped"] == []
    iou = report["per_class_iou"]
    assert iou["dress"] == pytest.approx(1.0)  # 1536 px, all right
    assert iou["pants"] == pytest.approx(768 / 1536)  # 768 right + 768 skin called pants
    assert iou["skin"] == 0.0
    assert iou["background"] == pytest.approx(2816 / 3072)  # the hat is called background
    assert iou["hat"] == 0.0
    assert iou["top"] is None and iou["footwear"] is None
    assert report["pixel_accuracy"] == pytest.approx(5120 / 6144)
    assert report["garment_miou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert report["garment_classes_present"] == ["dress", "pants", "hat"]
    assert report["mean_iou"] == pytest.approx((2816 / 3072 + 0 + 1 + 0.5 + 0) / 5)
    cm = np.array(report["confusion"])
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and cm.sum() == 2 * H * W
    assert cm[CLASS_ID["skin"], CLASS_ID["pants"]] == 768
    assert cm[CLASS_ID["hat"], CLASS_ID["background"]] == 256
    # Resampling 2 photos: either both (the point estimate), twice one or twice the other.
    low, high = report["garment_miou_ci95"]
    assert 0.0 <= low <= report["garment_miou"] <= high <= 1.0
    assert report["bootstrap_samples"] == 1000
    assert len(report["model_sha256"]) == 64
    assert report["model"] == str(colour_model)
    assert report["data"] == f"ccp:{ccp_folder}"
    json.dumps(report)  # the CLI writes it as JSON

    text = io.StringIO()
    print_report(report, Console(file=text, width=100, color_system=None))
    out = text.getvalue()
    assert "garment mIoU 50.0" in out and "pixel accuracy 83.3" in out
    assert "95% interval" in out
    assert "dress" in out and "100.0" in out


def test_evaluate_parser_with_ids_file(
    ccp_folder: Path, colour_model: Path, settings: Settings, tmp_path: Path
) -> None:
    ids = tmp_path / "val.txt"
    ids.write_text("# validation\n0002\n")
    report = evaluate_parser(f"ccp:{ccp_folder}", str(colour_model), ids, settings, progress=False)
    assert report["num_images"] == 1
    assert report["per_class_iou"]["dress"] is None
    assert report["garment_miou"] == 0.0  # only the hat is a garment here, and it is missed
    ids.write_text("# nothing\n")
    with pytest.raises(EvaluationError, match="lists no ids"):
        evaluate_parser(f"ccp:{ccp_folder}", str(colour_model), ids, settings, progress=False)


def test_evaluate_parser_skips_a_broken_photo(
    ccp_folder: Path, colour_model: Path, settings: Settings
) -> None:
    photo = ccp_folder / "photos" / "0002.jpg"
    photo.write_bytes(photo.read_bytes()[:200])  # truncated upload
    report = evaluate_parser(f"ccp:{ccp_folder}", str(colour_model), None, settings, progress=False)
    assert report["num_images"] == 1
    assert report["skipped"][0]["id"] == "0002" and "truncated" in report["skipped"][0]["error"]
    assert report["per_class_iou"]["dress"] == pytest.approx(1.0)


def test_evaluate_parser_bad_model(ccp_folder: Path, settings: Settings, tmp_path: Path) -> None:
    from candidfashion.parse import ModelSourceError

    with pytest.raises(ModelSourceError):
        evaluate_parser(f"ccp:{ccp_folder}", str(tmp_path / "missing.onnx"), None, settings)


@pytest.mark.ccp
def test_real_ccp_annotations_through_the_evaluator(ccp_dir: Path) -> None:
    """The real .mat files map to taxonomy ids the metric accepts (no model needed)."""
    from candidfashion.datasets import open_dataset

    ds = open_dataset(f"ccp:{ccp_dir}")
    image, mask = ds.load(ds.ids[0])
    cm = confusion_matrix(mask, mask, NUM_CLASSES)
    assert cm.sum() == mask.size
    assert summarise(cm)["pixel_accuracy"] == 1.0
    assert image.shape[:2] == mask.shape


def test_progress_bar_is_drawn_on_a_terminal(
    ccp_folder: Path, colour_model: Path, settings: Settings
) -> None:
    text = io.StringIO()
    console = Console(file=text, force_terminal=True, width=100)
    report = evaluate_parser(
        f"ccp:{ccp_folder}", str(colour_model), None, settings, progress=True, console=console
    )
    assert report["num_images"] == 2
    assert "evaluating" in text.getvalue() and "2/2" in text.getvalue()


def test_print_report_handles_classes_without_scores() -> None:
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    cm[0, 0] = 10  # background only: no garment in the truth
    report = {**summarise(cm), "data": "ccp:x", "num_images": 1, "model": "m.onnx"}
    report["model_sha256"] = "0" * 64
    text = io.StringIO()
    print_report(report, Console(file=text, width=100, color_system=None))
    assert report["garment_miou"] is None
    assert "garment mIoU -" in text.getvalue()


def test_bootstrap_interval_is_narrow_for_alike_photos_and_wide_for_mixed_ones() -> None:
    from candidfashion.evaluate import bootstrap_garment_miou

    top = CLASS_ID["top"]
    right = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    right[top, top] = 100
    wrong = np.zeros_like(right)
    wrong[top, 0] = 100
    same = np.stack([right] * 20)
    assert bootstrap_garment_miou(same) == (1.0, 1.0)
    low, high = bootstrap_garment_miou(np.stack([right] * 10 + [wrong] * 10))
    assert low < 0.5 < high and high - low > 0.2
    assert bootstrap_garment_miou(same[:1]) is None
    assert bootstrap_garment_miou(same, samples=0) is None


def test_paired_difference_interval() -> None:
    from candidfashion.evaluate import paired_bootstrap_difference

    right = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    right[CLASS_ID["top"], CLASS_ID["top"]] = 100
    wrong = np.zeros_like(right)
    wrong[CLASS_ID["top"], CLASS_ID["background"]] = 100
    # The same model twice: no difference in any resample.
    same = np.stack([right] * 5 + [wrong] * 5)
    assert paired_bootstrap_difference(same, same) == (0.0, 0.0)
    # Better on every photo: the whole interval is above zero, though the model's own
    # interval (half its photos right) is wide.
    low, high = paired_bootstrap_difference(np.stack([right] * 10), same)
    assert 0.0 < low <= high <= 1.0
    # Better on half the photos and worse on the other half: the interval straddles zero.
    swapped = np.stack([wrong] * 5 + [right] * 5)
    low, high = paired_bootstrap_difference(swapped, same)
    assert low < 0.0 < high
    # Photos whose truth differs were not scored on the same set.
    other_truth = same.copy()
    other_truth[0, CLASS_ID["top"], CLASS_ID["top"]] += 1
    with pytest.raises(EvaluationError, match="same photos"):
        paired_bootstrap_difference(same, other_truth)
    assert paired_bootstrap_difference(same, same, samples=0) is None


def test_eval_against_a_baseline_from_the_cli(
    ccp_folder: Path, colour_model: Path, settings: Settings, tmp_path: Path
) -> None:
    """``candidfashion eval --baseline``: both models on the same photos, and the difference."""
    from typer.testing import CliRunner

    from candidfashion.cli import app

    torch = pytest.importorskip("torch")
    blind = torch.nn.Conv2d(3, NUM_CLASSES, 1)  # calls every pixel background
    with torch.no_grad():
        blind.weight.zero_()
        blind.bias.fill_(-100.0)
        blind.bias[CLASS_ID["background"]] = 10.0
    blind_model = export_onnx_parser(blind, tmp_path / "blind.onnx", (W, H))
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        ["eval", "--data", f"ccp:{ccp_folder}", "--model", str(colour_model),
         "--baseline", str(blind_model), "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["garment_miou"] == pytest.approx(0.5)
    assert report["baseline"]["garment_miou"] == 0.0
    assert report["baseline"]["model"] == str(blind_model)
    assert report["garment_miou_difference"]["value"] == pytest.approx(0.5)
    # Two photos: resamples hold photo 1 twice (+0.75), photo 2 twice (0) or both (+0.5).
    low, high = report["garment_miou_difference"]["ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 0.75
    text = " ".join(result.output.split())
    assert "difference +50.0 points" in text and "paired interval" in text
    assert "not distinguishable from the baseline" in text
