"""Load test: N concurrent clients posting the demo photos to ``POST /api/v1/looks``.

Starts a real server (``candidfashion serve``) on 127.0.0.1 with a free port and a demo
catalog in a temporary data folder, waits for ``/readyz``, then runs ``--clients`` threads,
each uploading photos back to back for ``--duration`` seconds. Reports throughput, latency
percentiles, errors (any non-200 or transport failure) and the server's resident memory
before and after (summed over worker processes). Exits non-zero on any error.

    .venv/bin/python bench/load.py                       # 32 clients, 60 s
    .venv/bin/python bench/load.py --clients 8 --duration 20 --workers 2
    .venv/bin/python bench/load.py --url http://127.0.0.1:8000   # an already running server
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from candidfashion.demo import demo_photos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo.extend(int(c) for c in children)
    return total


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} was not ready within {timeout:.0f} s")


def run_clients(url: str, photos: list[bytes], clients: int, duration: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def client(n: int) -> None:
        with httpx.Client(timeout=300) as http:
            i = n
            while time.monotonic() < stop_at:
                photo = photos[i % len(photos)]
                i += 1
                start = time.perf_counter()
                try:
                    r = http.post(
                        f"{url}/api/v1/looks",
                        files={"photo": ("photo.jpg", photo, "image/jpeg")},
                        data={"k": "10"},
                    )
                    ok = r.status_code == 200 and "items" in r.json()
                    problem = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except (httpx.HTTPError, ValueError) as err:
                    problem = f"{type(err).__name__}: {err}"
                elapsed = time.perf_counter() - start
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    arr = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "clients": clients,
        "duration_s": round(wall, 1),
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "throughput_rps": round(len(latencies) / wall, 2),
        "latency_s": {
            "p50": round(float(np.percentile(arr, 50)), 3),
            "p95": round(float(np.percentile(arr, 95)), 3),
            "p99": round(float(np.percentile(arr, 99)), 3),
            "max": round(float(arr.max()), 3),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0, help="Seconds of load.")
    ap.add_argument("--workers", type=int, default=1, help="Server worker processes.")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads per model.")
    ap.add_argument("--url", help="Use this running server instead of starting one.")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    ap.add_argument("--sample-every", type=float, default=5.0, help="Seconds between RSS samples.")
    args = ap.parse_args()

    photos = [p.read_bytes() for p in demo_photos()]
    proc: subprocess.Popen | None = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {
                **os.environ,
                "CANDIDFASHION_DATA_DIR": tmp,
                "CANDIDFASHION_THREADS": str(args.threads),
                "CANDIDFASHION_LOOK_CACHE_SIZE": "100",
            }
            cmd = [
                sys.executable, "-m", "candidfashion.cli", "--log-level", "WARNING", "serve",
                "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(args.workers), "--demo",
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            wait_ready(url, proc, timeout=600)
            # One request first so the "before" memory includes loaded models, not startup.
            httpx.post(
                f"{url}/api/v1/looks",
                files={"photo": ("p.jpg", photos[0], "image/jpeg")},
                timeout=120,
            ).raise_for_status()
            rss_before = rss_bytes(proc.pid) if proc else 0
            # Sample memory through the run: "stable" means it levels off once the
            # look cache is full, which one before/after pair cannot show.
            timeline: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample_rss() -> None:
                start = time.perf_counter()
                while proc is not None and not stop.wait(args.sample_every):
                    timeline.append((time.perf_counter() - start, rss_bytes(proc.pid)))

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            result = run_clients(url, photos, args.clients, args.duration)
            stop.set()
            sampler.join()
            rss_after = rss_bytes(proc.pid) if proc else 0
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    result["workers"] = args.workers
    result["server_rss_mb"] = {
        "before": round(rss_before / 2**20, 1),
        "after": round(rss_after / 2**20, 1),
        "timeline": [[round(t, 1), round(b / 2**20, 1)] for t, b in timeline],
    }
    if len(timeline) >= 4:
        half = [b for t, b in timeline if t >= args.duration / 2]
        result["server_rss_mb"]["growth_second_half"] = round((max(half) - half[0]) / 2**20, 1)
    lat = result["latency_s"]
    print(
        f"{result['clients']} clients, {result['duration_s']} s: {result['ok']} ok, "
        f"{result['errors']} errors, {result['throughput_rps']} looks/s"
    )
    print(f"latency p50 {lat['p50']} s  p95 {lat['p95']} s  p99 {lat['p99']} s  max {lat['max']} s")
    print(
        f"server RSS {result['server_rss_mb']['before']} MB before, "
        f"{result['server_rss_mb']['after']} MB after"
    )
    if timeline:
        marks = "  ".join(
            f"{t:.0f}s {b / 2**20:.0f}" for t, b in timeline[:: max(1, len(timeline) // 8)]
        )
        print(f"server RSS (MB) over the run: {marks}")
    if "growth_second_half" in result["server_rss_mb"]:
        print(f"RSS growth in the second half: {result['server_rss_mb']['growth_second_half']} MB")
    for sample in result["error_samples"]:
        print("  error:", sample)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
