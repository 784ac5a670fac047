"""Evaluate an exported ONNX parser on a labelled data set.

The model runs through :class:`candidfashion.parse.Parser`, the exact code path the app
uses (letterbox, ONNX Runtime, resize back), and predictions are compared with the
annotation at its full resolution. Pixels labelled 255 are ignored.

Metrics (all from one confusion matrix summed over every image, rows = truth, columns =
prediction):

* ``per_class_iou``: TP / (TP + FP + FN) per taxonomy class; ``None`` when the class is in
  neither the truth nor the predictions.
* ``mean_iou``: mean of the per-class IoUs that are not ``None`` (a class the model predicts
  but the data never contains counts as 0).
* ``garment_miou``: mean IoU over the shoppable classes (``taxonomy.GARMENT_CLASSES``) that
  occur in the ground truth, the number that matters for "shop the look".
* ``pixel_accuracy``: correctly labelled pixels / labelled pixels.
* ``garment_miou_ci95``: a 95 % percentile bootstrap interval of ``garment_miou`` over
  photos (photos resampled with replacement, matrices re-summed). Rare classes live in a
  handful of photos (CCP's 104 validation photos hold 6 with shorts), so a difference
  between two models smaller than this interval's half-width is not evidence.
* ``baseline`` (with ``baseline_source``): a second model scored on the same photos, and
  ``garment_miou_difference``: this model's garment mIoU minus the baseline's, with a paired
  bootstrap interval (both models scored on the same resampled photos). Which photos are
  drawn moves both models alike, so this interval is narrower than the gap between the two
  models' own intervals would suggest, and it is the one to decide with.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from candidfashion.taxonomy import CLASSES, GARMENT_CLASSES, NUM_CLASSES

if TYPE_CHECKING:
    from candidfashion.config import Settings

log = logging.getLogger(__name__)

IGNORE = 255


class EvaluationError(ValueError):
    """The evaluation cannot run: no images, mismatched arrays or labels out of range."""


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore: int = IGNORE
) -> np.ndarray:
    """A (num_classes, num_classes) int64 matrix; entry [t, p] counts truth t predicted as p.

    Pixels whose target equals ``ignore`` are left out. Shapes must match; labels outside
    ``0..num_classes-1`` (other than ``ignore`` in the target) raise :class:`EvaluationError`.
    """
    if pred.shape != target.shape:
        raise EvaluationError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    t = target.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    keep = t != ignore
    t, p = t[keep], p[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise EvaluationError(f"target has labels outside 0..{num_classes - 1} (and {ignore})")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise EvaluationError(f"prediction has labels outside 0..{num_classes - 1}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU as float64; NaN where the class is in neither truth nor prediction."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def garment_ids_in_truth(confusion: np.ndarray) -> list[int]:
    """Taxonomy ids of the garment classes that occur in the truth (rows) of a matrix:
    the classes garment mIoU averages over."""
    in_truth = np.asarray(confusion).sum(axis=1) > 0
    return [i for i in (CLASSES.index(c) for c in GARMENT_CLASSES) if in_truth[i]]


def summarise(confusion: np.ndarray) -> dict[str, Any]:
    """The report's metric fields from a confusion matrix over the taxonomy."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.shape != (NUM_CLASSES, NUM_CLASSES):
        raise EvaluationError(f"confusion must be {NUM_CLASSES}x{NUM_CLASSES}, got {cm.shape}")
    iou = iou_from_confusion(cm)
    total = int(cm.sum())
    garment_ids = garment_ids_in_truth(cm)
    valid = ~np.isnan(iou)
    return {
        "per_class_iou": {
            name: (None if np.isnan(iou[i]) else float(iou[i])) for i, name in enumerate(CLASSES)
        },
        "pixel_accuracy": float(np.trace(cm) / total) if total else None,
        "mean_iou": float(iou[valid].mean()) if valid.any() else None,
        "garment_miou": float(iou[garment_ids].mean()) if garment_ids else None,
        "garment_classes_present": [CLASSES[i] for i in garment_ids],
        "pixels": total,
        "confusion": cm.tolist(),
    }


def bootstrap_garment_miou(
    per_image: np.ndarray, samples: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % percentile interval of garment mIoU, resampling photos with replacement.

    ``per_image`` is (n, C, C): one confusion matrix per photo. ``None`` when there are
    fewer than two photos or ``samples`` is 0.
    """
    counts = _resample_counts(len(per_image), samples, seed)
    if counts is None:
        return None
    return _percentile_interval(_garment_miou_of_resamples(per_image, counts))


def paired_bootstrap_difference(
    per_image: np.ndarray, baseline_per_image: np.ndarray, samples: int = 1000, seed: int = 0
) -> tuple[float, float] | None:
    """95 % interval of garment mIoU (model minus baseline), resampling photos in pairs.

    Both arrays are (n, C, C) confusion matrices of the same n photos, in the same order.
    """
    if per_image.shape != baseline_per_image.shape or not np.array_equal(
        per_image.sum(axis=2), baseline_per_image.sum(axis=2)
    ):
        raise EvaluationError("the two models were not scored on the same photos")
    counts = _resample_counts(len(per_image), samples, seed)
    if counts is None:
        return None
    return _percentile_interval(
        _garment_miou_of_resamples(per_image, counts)
        - _garment_miou_of_resamples(baseline_per_image, counts)
    )


def _resample_counts(n: int, samples: int, seed: int) -> np.ndarray | None:
    """(samples, n): how often each of n photos is drawn in each resample; ``None`` when
    there is nothing to resample (fewer than two photos or no samples)."""
    if n < 2 or samples <= 0:
        return None
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    return np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)


def _garment_miou_of_resamples(per_image: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Garment mIoU of each resample (a row of ``counts``); NaN where no garment is present.

    The classes averaged over come from the truth, so two models scored on the same photos
    are averaged over the same classes in every resample.
    """
    flat = per_image.reshape(len(per_image), -1).astype(np.float64)
    # Draw counts times matrices: every resample's summed matrix at once.
    totals = (counts @ flat).reshape(len(counts), NUM_CLASSES, NUM_CLASSES)
    values = np.full(len(counts), np.nan)
    for k, cm in enumerate(totals):
        present = garment_ids_in_truth(cm)
        if present:
            values[k] = iou_from_confusion(cm)[present].mean()
    return values


def _percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of the values that are not NaN."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=True,
        disable=not enabled,
    )


def evaluate_parser(
    data: str,
    model_source: str,
    ids_file: Path | None,
    settings: Settings,
    *,
    progress: bool = True,
    console: Console | None = None,
    bootstrap: int = 1000,
    baseline_source: str | None = None,
) -> dict[str, Any]:
    """Run the ONNX parser over a data set spec (``ccp:DIR`` ...) and return the metrics.

    ``ids_file`` lists the photo ids to use, one per line (default: every labelled photo).
    Photos that fail to load are skipped and listed under ``skipped`` with the reason.
    ``bootstrap`` resamples give ``garment_miou_ci95`` (0 turns it off). With
    ``baseline_source`` a second parser is scored on the same photos and the report says
    whether the difference in garment mIoU is more than chance (a paired interval).
    """
    from candidfashion.datasets import DatasetError, open_dataset, read_ids
    from candidfashion.imageio import ImageError
    from candidfashion.parse import Parser

    ids = None
    if ids_file is not None:
        try:
            ids = read_ids(ids_file)
        except OSError as err:
            raise EvaluationError(f"cannot read the ids file {ids_file}: {err}") from err
        if not ids:
            raise EvaluationError(f"the ids file {ids_file} lists no ids")
    dataset = open_dataset(data, ids=ids)
    if len(dataset) == 0:
        raise EvaluationError(f"{data} has no labelled images to evaluate")

    def open_parser(source: str) -> Parser:
        return Parser(
            source,
            threads=settings.threads,
            cache_dir=settings.data_dir / "models",
            flip=settings.parser_flip,
        )

    parser = open_parser(model_source)
    baseline = open_parser(baseline_source) if baseline_source else None

    per_image: list[np.ndarray] = []
    baseline_per_image: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    started = time.perf_counter()
    with _progress(console, progress) as bar:
        task = bar.add_task("evaluating", total=len(dataset))
        for image_id in dataset.ids:
            try:
                image, mask = dataset.load(image_id)
            except (DatasetError, ImageError) as err:
                log.warning("skipping %s: %s", image_id, err)
                skipped.append({"id": image_id, "error": str(err)})
                bar.advance(task)
                continue
            labels = parser.parse(image)
            per_image.append(confusion_matrix(labels, mask, NUM_CLASSES))
            if baseline is not None:
                baseline_labels = baseline.parse(image)
                baseline_per_image.append(confusion_matrix(baseline_labels, mask, NUM_CLASSES))
            bar.advance(task)
    seconds = time.perf_counter() - started
    evaluated = len(dataset) - len(skipped)
    if evaluated == 0:
        raise EvaluationError(f"none of the {len(dataset)} images could be loaded")
    stacked = np.stack(per_image)
    interval = bootstrap_garment_miou(stacked, bootstrap)
    report: dict[str, Any] = {
        "data": data,
        "model": model_source,
        "model_sha256": parser.sha256,
        "flip": parser.flip,
        "input_size": list(parser.input_size),
        "ids_file": str(ids_file) if ids_file else None,
        "num_images": evaluated,
        "skipped": skipped,
        "classes": list(CLASSES),
        "seconds": round(seconds, 3),
        "seconds_per_image": round(seconds / evaluated, 4),
    }
    report.update(summarise(stacked.sum(axis=0)))
    report["garment_miou_ci95"] = list(interval) if interval else None
    report["bootstrap_samples"] = bootstrap if interval else 0
    if baseline is not None:
        baseline_stacked = np.stack(baseline_per_image)
        baseline_summary = summarise(baseline_stacked.sum(axis=0))
        report["baseline"] = {
            "model": baseline_source,
            "model_sha256": baseline.sha256,
            "input_size": list(baseline.input_size),
            **{
                k: baseline_summary[k]
                for k in ("per_class_iou", "pixel_accuracy", "mean_iou", "garment_miou")
            },
        }
        difference = None
        if report["garment_miou"] is not None and baseline_summary["garment_miou"] is not None:
            difference = report["garment_miou"] - baseline_summary["garment_miou"]
        paired = paired_bootstrap_difference(stacked, baseline_stacked, bootstrap)
        report["garment_miou_difference"] = {
            "value": difference,
            "ci95": list(paired) if paired else None,
        }
    return report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def print_report(report: dict[str, Any], console: Console) -> None:
    """A per-class IoU table (garment classes marked) and the headline numbers."""
    cm = np.asarray(report["confusion"], dtype=np.int64)
    truth = cm.sum(axis=1)
    total = max(int(truth.sum()), 1)
    table = Table(title=f"Parser on {report['data']} ({report['num_images']} images)")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("share of truth %", justify="right")
    for i, name in enumerate(report.get("classes", CLASSES)):
        label = f"[bold]{name}[/]" if name in GARMENT_CLASSES else name
        table.add_row(label, _fmt(report["per_class_iou"][name]), f"{100 * truth[i] / total:.1f}")
    console.print(table)
    console.print(
        f"garment mIoU [bold]{_fmt(report['garment_miou'])}[/]   "
        f"mean IoU {_fmt(report['mean_iou'])}   "
        f"pixel accuracy {_fmt(report['pixel_accuracy'])}"
    )
    if report.get("garment_miou_ci95"):
        low, high = report["garment_miou_ci95"]
        console.print(
            f"garment mIoU 95% interval {_fmt(low)} to {_fmt(high)} "
            f"(bootstrap over photos, {report['bootstrap_samples']} resamples)"
        )
    console.print(f"model {report['model']} (sha256 {report['model_sha256'][:12]})")
    if report.get("baseline"):
        base = report["baseline"]
        diff = report["garment_miou_difference"]
        console.print(
            f"baseline {base['model']} (sha256 {base['model_sha256'][:12]}): "
            f"garment mIoU {_fmt(base['garment_miou'])}"
        )
        if diff["value"] is not None:
            line = f"difference {100 * diff['value']:+.1f} points"
            if diff["ci95"]:
                low, high = diff["ci95"]
                verdict = (
                    "better"
                    if low > 0
                    else "worse"
                    if high < 0
                    else "not distinguishable from the baseline"
                )
                line += f", 95% paired interval {100 * low:+.1f} to {100 * high:+.1f}: {verdict}"
            console.print(line)
    if report.get("skipped"):
        console.print(f"[yellow]skipped {len(report['skipped'])} images that failed to load[/]")
