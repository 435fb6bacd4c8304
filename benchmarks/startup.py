"""Start-up: how long `busai --help`, a sub-command's help, `import busai` and the first prediction of
`busai predict` on one scan take, each in a fresh process (issue 33 item 4).

    python benchmarks/startup.py   # on a quiet machine; writes results/startup.json

Each command runs ``--repeats`` times in a new process and the best wall time counts (the first
runs warm the file cache). The first prediction is `busai predict SCAN --out DIR` with both
release models on one synthetic 400 x 500 scan, with the PyTorch backend and, where ONNX Runtime is
installed, the ONNX one: loading, the per-machine path choice, both forward passes and the files.
The file records the CPU model and flags beside the times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_seconds(argv: list[str], repeats: int, env: dict, cleanup: Path | None = None) -> float:
    """The best wall time of ``repeats`` fresh processes running ``argv`` (each must exit 0)."""
    best = float("inf")
    for _ in range(repeats):
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        best = min(best, elapsed)
    return round(best, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "results" / "startup.json"))
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image

    from busai.data.synthetic import make_phantom
    from busai.extras import missing
    from busai.outputs import atomic_write_text
    from busai.runs import machine_info

    busai_cli = str(Path(sys.executable).with_name("busai"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        scan = Path(tmp) / "scan.png"
        image, _ = make_phantom(np.random.default_rng(0), (400, 500), "benign")
        Image.fromarray(image).save(scan)
        out = Path(tmp) / "out"
        commands = {
            "busai --help": [busai_cli, "--help"],
            "busai predict --help": [busai_cli, "predict", "--help"],
            "python -c 'import busai'": [sys.executable, "-c", "import busai"],
            "busai predict SCAN (torch)": [busai_cli, "predict", str(scan), "--out", str(out), "--backend", "torch"],
        }
        if not missing("onnx"):
            commands["busai predict SCAN (onnx)"] = [busai_cli, "predict", str(scan), "--out", str(out), "--backend", "onnx"]
        seconds = {name: best_seconds(cmd, args.repeats, env, out if "SCAN" in name else None) for name, cmd in commands.items()}
    for name, value in seconds.items():
        print(f"{name}: {value:.2f} s")
    result = {
        "command": "python benchmarks/startup.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "repeats": args.repeats,
        "seconds": seconds,
        "machine": machine_info(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
