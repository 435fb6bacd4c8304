"""Bounded load test of ``busai serve``: concurrent large-dimension uploads against the server's memory.

Starts ``busai serve`` on 127.0.0.1 (a free port; loopback only, no other address) as a child
process and, with a fixed number of requests, then stops by itself:

1. three uploads of a WIDTH x HEIGHT PNG, one after the other: the server's peak RSS after them is
   the cost of serving that size one request at a time (``one_at_a_time.peak_rss_mb``);
2. ROUNDS rounds of CONCURRENCY simultaneous uploads of the same PNG, while another thread asks
   ``/api/info`` every 0.5 s (it must keep answering 200);
3. one more upload, which must succeed once the load is gone;
4. SIGTERM, after which the server must exit and leave no ``busai-serve-*`` folder.

Each upload is answered 200 or, past ``--max-queue`` uploads held at once, 503 with Retry-After.
The stated bound is that peak plus a held-upload allowance, where the allowance covers the raw
uploads the server may hold, running or waiting (``max_queue`` x 2 x the upload limit: the body and
its copy) plus 64 MB for their threads and buffers: with decoding inside the one-at-a-time section, more
concurrent uploads must not add decoded images. ``passed`` says whether the peak RSS under load
stayed under it, every info probe and the final upload answered 200, and the folder was removed.

Memory is read from /proc/PID/status (Linux): VmHWM is the true peak RSS, which sampling could miss.

    python benchmarks/serve_load.py                       # release models, 2 rounds of 12 x 6000x6600
    python benchmarks/serve_load.py --seg runs/seg --cls none --rounds 1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import shutil
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
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
HELD_OVERHEAD_MB = 64


def phantom_png(width: int, height: int) -> bytes:
    """A dark scan-like image with a few bright and dark ellipses: large in pixels, small as PNG."""
    picture = Image.new("L", (width, height), 20)
    draw = ImageDraw.Draw(picture)
    rng = np.random.default_rng(0)
    for _ in range(12):
        x, y = rng.integers(0, width), rng.integers(0, height)
        rx, ry = rng.integers(width // 40, width // 8), rng.integers(height // 40, height // 8)
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(rng.integers(0, 200)))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak since start) of ``pid`` in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(
    *,
    seg: str,
    cls: str,
    width: int,
    height: int,
    concurrency: int,
    rounds: int,
    max_queue: int,
    sequential_uploads: int = 3,
    max_upload_mb: float = 10.0,
    startup_timeout: float = 300,
    request_timeout: float = 900,
) -> dict:
    """Run the four steps above and return the measurements (see the module docstring)."""
    data = phantom_png(width, height)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    scratch = tempfile.mkdtemp(prefix="serve-load-")
    env = {**os.environ, "TMPDIR": scratch, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    command = [
        sys.executable,
        "-m",
        "busai",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--seg",
        seg,
        "--cls",
        cls,
        "--max-queue",
        str(max_queue),
        "--max-upload-mb",
        str(max_upload_mb),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result: dict = {}
    try:
        _wait_until_up(base, server, startup_timeout)
        idle = memory_mb(server.pid)

        def upload(client: httpx.Client) -> tuple[int, float]:
            start = time.perf_counter()
            answer = client.post(f"{base}/api/predict", files={"file": ("large.png", data, "image/png")})
            if answer.status_code == 503:
                assert answer.headers.get("retry-after"), "503 without Retry-After"
            elif answer.status_code == 200:
                assert (answer.json()["width"], answer.json()["height"]) == (width, height)
            return answer.status_code, time.perf_counter() - start

        with httpx.Client(timeout=request_timeout) as client:
            sequential = [upload(client) for _ in range(sequential_uploads)]
        single = memory_mb(server.pid)
        single_status = max(status for status, _ in sequential)
        single_s = max(seconds for _, seconds in sequential)

        probes: list[tuple[int, float]] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=60) as client:
                while True:  # at least one probe, however short the load
                    start = time.perf_counter()
                    probes.append((client.get(f"{base}/api/info").status_code, time.perf_counter() - start))
                    if stop.wait(0.5):
                        return

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        statuses: list[int] = []
        seconds: list[float] = []
        after_round = []
        for _ in range(rounds):
            barrier = threading.Barrier(concurrency)
            lock = threading.Lock()

            def worker(barrier: threading.Barrier = barrier, lock: threading.Lock = lock) -> None:
                with httpx.Client(timeout=request_timeout) as client:
                    barrier.wait()
                    status, took = upload(client)
                with lock:
                    statuses.append(status)
                    seconds.append(took)

            workers = [threading.Thread(target=worker) for _ in range(concurrency)]
            for thread in workers:
                thread.start()
            for thread in workers:
                thread.join()
            after_round.append(memory_mb(server.pid)["VmRSS"])
        stop.set()
        prober.join()
        with httpx.Client(timeout=request_timeout) as client:
            final_status, _ = upload(client)
        peak = memory_mb(server.pid)["VmHWM"]
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        leftover = [p.name for p in Path(scratch).glob("busai-serve-*")]

        allowance = max_queue * 2 * max_upload_mb + HELD_OVERHEAD_MB
        bound = round(single["VmHWM"] + allowance, 1)
        ok_statuses = [s for s in statuses if s == 200]
        result = {
            "image": {"width": width, "height": height, "megapixels": round(width * height / 1e6, 2), "png_kb": round(len(data) / 1024, 1)},
            "server": {"seg": seg, "cls": cls, "max_queue": max_queue, "max_upload_mb": max_upload_mb},
            "requests": {"one_at_a_time": sequential_uploads, "concurrent": concurrency * rounds, "concurrency": concurrency, "rounds": rounds, "final": 1},
            "idle_rss_mb": idle["VmRSS"],
            "one_at_a_time": {"uploads": sequential_uploads, "worst_status": single_status, "seconds_max": round(single_s, 2), "peak_rss_mb": single["VmHWM"]},
            "under_load": {
                "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses))},
                "seconds_200_max": round(max((t for s, t in zip(statuses, seconds) if s == 200), default=0), 2),
                "seconds_503_max": round(max((t for s, t in zip(statuses, seconds) if s == 503), default=0), 2),
                "rss_after_each_round_mb": after_round,
                "peak_rss_mb": peak,
            },
            "info_probes": {"count": len(probes), "all_200": all(s == 200 for s, _ in probes), "seconds_max": round(max((t for _, t in probes), default=0), 3)},
            "final_upload_status": final_status,
            "sigterm": {"exit_code": server.returncode, "temporary_folders_left": leftover},
            "bound_mb": bound,
            "bound_rule": f"one-at-a-time peak + {max_queue} held x 2 x {max_upload_mb:g} MB + {HELD_OVERHEAD_MB} MB",
        }
        result["passed"] = bool(
            peak <= bound
            and ok_statuses
            and set(statuses) <= {200, 503}
            and single_status == 200
            and result["info_probes"]["all_200"]
            and probes
            and final_status == 200
            and not leftover
        )
        return result
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def _wait_until_up(base: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{base}/api/info", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start in time")
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seg", default="release")
    parser.add_argument("--cls", default="release")
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=6600)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "results" / "serve_load.json"))
    args = parser.parse_args()
    result = run_load(
        seg=args.seg, cls=args.cls, width=args.width, height=args.height, concurrency=args.concurrency, rounds=args.rounds, max_queue=args.max_queue
    )
    command = shlex.join(["python", "benchmarks/serve_load.py", *sys.argv[1:]])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.machine())
    result = {"command": command, "cpu": cpu, "cpu_count": os.cpu_count()} | result
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
