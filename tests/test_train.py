"""Parser training: a real (tiny) run on a CCP-format folder, killed mid-way and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from builders import CCP_LABELS, write_ccp

torch = pytest.importorskip("torch")
mlflow = pytest.importorskip("mlflow")

from candidfashion.train.loop import (  # noqa: E402
    dice_loss,
    lovasz_softmax_loss,
    metrics_from_confusion,
)

pytestmark = pytest.mark.slow
W, H = 64, 96


def _photos(n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Synthetic 'people': a red top over blue pants on grey, with some jitter."""
    fine = {name: i for i, name in enumerate(CCP_LABELS)}
    rng = np.random.default_rng(0)
    photos = {}
    for i in range(n):
        rgb = np.full((H, W, 3), 128, np.uint8)
        gt = np.full((H, W), fine["null"], np.uint8)
        x0 = int(rng.integers(8, 24))
        rgb[16:48, x0 : x0 + 24] = (200, 30, 30)
        gt[16:48, x0 : x0 + 24] = fine["t-shirt"]
        rgb[48:88, x0 : x0 + 24] = (30, 30, 200)
        gt[48:88, x0 : x0 + 24] = fine["jeans"]
        photos[f"{i + 1:04d}"] = (rgb, gt)
    return photos


def _train_cmd(data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "candidfashion.cli", "train",
        "--data", f"ccp:{data}", "--out", str(out), "--epochs", str(epochs),
        "--batch-size", "2", "--size", f"{W}x{H}", "--input-size", f"{W}x{H}",
        "--val-ids", str(data / "val.txt"), *extra,
    ]  # fmt: skip


def _toy_run(tmp_path: Path) -> tuple[Path, dict[str, str], str]:
    """A 12-photo CCP folder (2 for validation), the environment and MLflow URI for a run."""
    data = write_ccp(tmp_path / "ccp", _photos(12))
    (data / "val.txt").write_text("0011\n0012\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "CANDIDFASHION_TRAIN_THREADS": "1",
        "CANDIDFASHION_DATA_DIR": str(tmp_path / "data"),
    }
    return data, env, uri


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)


def _folded(done: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr with whitespace folded: Rich wraps long lines."""
    return " ".join((done.stdout + done.stderr).split())


def _kill_after_first_checkpoint(cmd: list[str], env: dict[str, str], out: Path) -> str:
    """Start a training run and SIGKILL it once ``last.pt`` exists; returns its output."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    killed_while_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0].decode()
    assert (out / "last.pt").exists(), output
    if not killed_while_running:
        pytest.skip("the run finished before it could be killed; nothing to resume")
    return output


def test_dice_loss_is_zero_for_a_perfect_prediction() -> None:
    target = torch.tensor([[[0, 3], [3, 255]]])
    perfect = torch.nn.functional.one_hot(target.clamp(max=13), 14).permute(0, 3, 1, 2) * 50.0
    assert dice_loss(perfect.float(), target) < 1e-3
    assert dice_loss(-perfect.float(), target) > 0.5


def test_lovasz_loss_equals_the_jaccard_loss_on_hard_predictions() -> None:
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 4, size=(2, 16, 16)))
    target[0, 0, :4] = 255  # ignored pixels count for nothing
    predicted = target.clone().clamp(max=3)
    flip = torch.from_numpy(rng.random((2, 16, 16)) < 0.3)
    predicted[flip] = torch.from_numpy(rng.integers(0, 5, size=int(flip.sum())))
    logits = torch.nn.functional.one_hot(predicted, 14).permute(0, 3, 1, 2).float() * 100.0
    valid = target != 255
    jaccard_losses = []
    for c in target[valid].unique():
        t, p = (target == c) & valid, (predicted == c) & valid
        jaccard_losses.append(1 - (t & p).sum().item() / (t | p).sum().item())
    expected = float(np.mean(jaccard_losses))
    assert lovasz_softmax_loss(logits, target).item() == pytest.approx(expected, abs=1e-5)
    perfect = torch.nn.functional.one_hot(target.clamp(max=13), 14).permute(0, 3, 1, 2) * 100.0
    assert lovasz_softmax_loss(perfect.float(), target).item() == pytest.approx(0, abs=1e-5)


def test_lovasz_loss_gradient_moves_towards_the_target_and_subsamples() -> None:
    target = torch.zeros(1, 64, 64, dtype=torch.long)
    target[0, 20:40, 20:40] = 3
    logits = torch.zeros(1, 14, 64, 64, requires_grad=True)
    loss = lovasz_softmax_loss(logits, target, max_pixels=1000)
    loss.backward()
    assert logits.grad is not None
    # Descending the gradient raises the right class's score where it is the label.
    assert (logits.grad[0, 3, 20:40, 20:40] <= 0).all()
    assert (logits.grad[0, 3, 20:40, 20:40] < 0).sum() > 0
    assert int((logits.grad.abs().sum(1) > 0).sum()) <= 1000


def test_metrics_from_confusion_counts_only_present_garments() -> None:
    cm = np.zeros((14, 14), dtype=np.int64)
    cm[0, 0], cm[3, 3], cm[3, 0] = 90, 5, 5
    metrics = metrics_from_confusion(cm)
    assert metrics["garment_miou"] == pytest.approx(0.5)
    assert set(metrics["per_class_iou"]) == {"background", "top"}


def test_repeat_factors_favour_photos_of_rare_classes() -> None:
    from candidfashion.train.data import IGNORE, repeat_factors

    masks = [np.full((20, 20), 3, np.uint8) for _ in range(10)]  # a top in every photo
    masks[0][:10] = 8  # shorts in one photo of ten (200 px)
    masks[1][:2, :5] = 11  # a hat of 10 px: too small to count
    masks[2][:, :] = 2  # hair only: not a product class
    masks[3][:10] = IGNORE
    factors = repeat_factors(masks, threshold=0.3)
    assert factors[0] == pytest.approx(np.sqrt(0.3 / 0.1))
    assert factors[1:].tolist() == [1.0] * 9
    # A threshold below every class's frequency changes nothing.
    assert repeat_factors(masks, threshold=0.05).tolist() == [1.0] * 10


def test_training_resumes_after_a_kill(tmp_path: Path) -> None:
    data, env, uri = _toy_run(tmp_path)
    out = tmp_path / "run"
    epochs = 6
    _kill_after_first_checkpoint(_train_cmd(data, out, epochs, "--mlflow-uri", uri), env, out)

    resumed = _run(_train_cmd(data, out, epochs, "--mlflow-uri", uri, "--resume"), env)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log
    assert "resumed from epoch" in log
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == epochs - 1

    # A different length cannot reuse the one-cycle schedule: refused with a clear message.
    longer = _run(_train_cmd(data, out, epochs + 2, "--mlflow-uri", uri, "--resume"), env)
    assert longer.returncode == 1, longer.stdout + longer.stderr
    assert f"resume it with --epochs {epochs}" in _folded(longer)
    assert "Traceback" not in longer.stdout + longer.stderr
    # The model learned the two colours: the toy problem is easy.
    assert state["metrics"]["garment_miou"] > 0.5, state["metrics"]

    # One MLflow run, with exactly one value per epoch despite the kill.
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("candidfashion-parser")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "val_garment_miou")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert "confusion.png" in artifacts

    # The exported parser runs in ONNX Runtime and finds the top.
    from candidfashion.parse import Parser

    parser = Parser(str(out / "parser.onnx"))
    rgb, _ = _photos(1)["0001"]
    labels = parser.parse(rgb)
    assert labels.shape == (H, W)
    assert (labels[24:40, 24:32] == 3).mean() > 0.8  # taxonomy id 3 = top


def test_ema_and_bf16_training_resumes_and_ships_the_average(tmp_path: Path) -> None:
    data, env, uri = _toy_run(tmp_path)
    out = tmp_path / "run"
    extra = ("--mlflow-uri", uri, "--ema", "0.9", "--bf16", "--lr", "5e-3")
    epochs = 5
    _kill_after_first_checkpoint(_train_cmd(data, out, epochs, *extra), env, out)
    done = _run(_train_cmd(data, out, epochs, *extra, "--resume"), env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from epoch" in done.stdout + done.stderr
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 4
    # The shipped weights are the moving average, not the last step's weights.
    key = "classifier.weight"
    assert not torch.equal(state["model"][key], state["raw_model"][key])
    assert torch.equal(state["model"][key], state["ema"][f"module.{key}"])
    assert state["metrics"]["garment_miou"] > 0.5, state["metrics"]

    # Resuming without --ema would drop the average and ship raw weights: refused.
    refused = _run(_train_cmd(data, out, epochs, "--mlflow-uri", uri, "--resume"), env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "resume with --ema 0.9" in _folded(refused)

    # last.pt exports as it is (it loads with weights_only=True, RNG states included).
    exported = _run(
        [sys.executable, "-m", "candidfashion.cli", "export", "--checkpoint", str(out / "last.pt"),
         "--out", str(tmp_path / "last.onnx")],
        env,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert (tmp_path / "last.onnx").stat().st_size > 0


def test_same_seed_gives_the_same_weights(tmp_path: Path) -> None:
    """Augmentation included: albumentations ignores the global seeds unless seeded itself."""
    data, env, uri = _toy_run(tmp_path)
    states = []
    for run in ("a", "b"):
        done = _run(
            _train_cmd(data, tmp_path / run, 2, "--mlflow-uri", uri, "--repeat-threshold", "0.5"),
            env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "repeat-factor sampling" in done.stdout + done.stderr
        states.append(torch.load(tmp_path / run / "last.pt", map_location="cpu")["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
