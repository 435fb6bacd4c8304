"""Images per second of `busai predict` with both release models, per inference path, side by side in one
run, against the machine's FLOP limit (model GFLOPs x images/s over a measured matmul peak).

    python benchmarks/predict_throughput.py --n 1000   # on a quiet machine; writes results/predict_throughput.json
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/predict_throughput.py --n 1000 \
        --out results/predict_throughput_avx2cap.json   # the same machine as an AVX2-only one

Paths (each predicts the same N scans into a fresh folder, through busai.prediction.predict_paths,
models loaded once before the clock starts):
- ``before``: one scan at a time on one thread, batch norm unfolded: the pipeline as it was before batching;
- ``batched``: the default (`busai predict`): batches of 8, 2 threads, batch norm folded, the path the CPU flags choose;
- ``batched-probe``: the same with the path measured per machine (BUSAI_PROBE=1, as the busai command runs);
- ``batched-no-overlays``: `--no-overlays`;
- ``onnx``: `--backend onnx` (when onnxruntime is installed);
- ``issue-33 baseline``: `busai predict` as it was when issue 33 was filed (``--baseline``, commit 3f74e7d, the
  last before its work), the same release weights, run from ``git archive`` of that commit in a child process
  with the same interpreter (models loaded and warmed before its clock too): the target's "today". Under an
  ISA cap its bf16 check, which reads the CPU and not the cap, is made to answer as the capped machine would.
Beside the paths, ``models_only`` times the two networks alone (batches of 8, inputs prepared before the
clock) against the FLOP limit of fp32 and, on a machine with native bf16, of bf16.
The file records the CPU model and flags, threads, load average and torch version beside the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from busai import inference, pipeline  # noqa: E402
from busai.machine import cpu_flags, cpu_model, isa_cap, native_bf16  # noqa: E402
from busai.outputs import atomic_write_text  # noqa: E402
from busai.prediction import predict_paths  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# BUSI's 780 scans, then BUS-UCLM's (larger, from another scanner): 1,000 scans need both.
DEFAULT_DATA = [SHARED_DATA / "Dataset_BUSI_with_GT", SHARED_DATA / "BUS-UCLM" / "images"]


def scans(folders: list[Path], n: int) -> list[Path]:
    """The first ``n`` images (masks left out) of ``folders``, each in sorted order, one folder after the other."""
    files = [p for folder in folders for p in sorted(folder.rglob("*")) if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp") and "_mask" not in p.stem]
    if len(files) < n:
        raise SystemExit(f"{', '.join(map(str, folders))}: hold {len(files)} images, fewer than --n {n}; pass more --data folders or a smaller --n")
    return files[:n]


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` size x size matmuls: the machine's practical limit for dense layers."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def model_gflops(models) -> dict[str, float]:
    """GFLOPs of one forward (one image) of each model, counted by torch's FlopCounterMode (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    result = {}
    for model in models:
        network = getattr(model, "loaded", model)  # a busai.Model or the network it holds
        x = torch.zeros(1, 3, network.image_size, network.image_size)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            network.module(x)
        result[network.task] = counter.get_total_flops() / 1e9
    return result


def run_path(name: str, paths: list[Path], models, out_root: Path, **options) -> dict:
    out = out_root / name
    start = time.perf_counter()
    rows = predict_paths(paths, out, seg=models[0], cls=models[1], progress=False, **options)
    seconds = time.perf_counter() - start
    assert len(rows) == len(paths) and not any(r["error"] for r in rows), f"{name}: not every scan was predicted"
    return {"seconds": round(seconds, 3), "images_per_second": round(len(paths) / seconds, 3), "options": options}


# The child of the baseline path: argv = old source folder, list of scans, output folder, "bf16" or "no-bf16"
# (whether this machine, below any ISA cap, computes bf16 natively); prints one JSON line.
BASELINE_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
import busai.engine
from busai.prediction import load_models, predict_paths
if sys.argv[4] == "no-bf16":  # under an ISA cap, the old check (which reads the CPU, not the cap) answers as the capped machine
    busai.engine.cpu_has_native_bf16 = lambda: False
files = Path(sys.argv[2]).read_text().splitlines()
out = Path(sys.argv[3])
seg, cls = load_models("release", "release")
predict_paths(files[:1], out / "warm", seg=seg, cls=cls, progress=False)
start = time.perf_counter()
rows = predict_paths(files, out / "run", seg=seg, cls=cls, progress=False)
seconds = time.perf_counter() - start
assert len(rows) == len(files) and not any(r["error"] for r in rows)
print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
"""


def baseline_path(commit: str, paths: list[Path], root: Path) -> dict:
    """images/s of `busai predict` at ``commit`` on ``paths`` (see the module's docstring)."""
    source = root / f"src-{commit}"
    source.mkdir()
    archive = subprocess.run(["git", "archive", commit, "src"], check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1]).stdout
    subprocess.run(["tar", "-x", "-C", str(source), "--strip-components=1"], input=archive, check=True)
    listing = root / "baseline-scans.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    bf16 = "bf16" if native_bf16() else "no-bf16"
    done = subprocess.run(
        [sys.executable, "-c", BASELINE_CHILD, str(source), str(listing), str(root / "baseline"), bf16], check=True, capture_output=True, text=True
    )
    child = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "seconds": round(child["seconds"], 3),
        "images_per_second": round(len(paths) / child["seconds"], 3),
        "options": {"commit": commit, "threads": child["threads"]},
    }


def models_only(models, files: list[Path], n: int = 96) -> dict:
    """images/s of the two networks alone, in predict's batches, on inputs prepared before the clock."""
    from busai.config import PREDICT_BATCH_SIZE
    from busai.data.discover import read_image

    by_task = pipeline.networks_by_task(models)
    prepared = [pipeline.prepare_scan(by_task, read_image(f), gate=False) for f in files[:n]]
    pipeline.run_models(by_task, prepared[:PREDICT_BATCH_SIZE])  # kernels for a full batch built before the clock
    start = time.perf_counter()
    for i in range(0, len(prepared), PREDICT_BATCH_SIZE):
        pipeline.run_models(by_task, prepared[i : i + PREDICT_BATCH_SIZE])
    seconds = time.perf_counter() - start
    return {"images": len(prepared), "seconds": round(seconds, 3), "images_per_second": round(len(prepared) / seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="folder of scans, repeatable (default: BUSI, then BUS-UCLM's images)")
    parser.add_argument("--n", type=int, default=1000, help="scans per path (default 1000)")
    parser.add_argument("--out", type=Path, default=Path("results/predict_throughput.json"))
    parser.add_argument("--baseline", default="3f74e7d", help="commit of the issue-33 baseline path, or none (default 3f74e7d)")
    args = parser.parse_args()

    os.environ["BUSAI_ALL_CORES"] = "1"  # as the busai command runs
    from busai.runs import best_threads

    best_threads()
    folders = args.data or DEFAULT_DATA
    files = scans(folders, args.n)
    models = pipeline.load_models("release", "release")
    from busai.data.discover import read_image

    pipeline.predict_scans(models, [read_image(files[0])], gate=False)  # every path starts with warm models (oneDNN kernels built)
    gflops = model_gflops(models)  # before the paths: a failure here costs no timing
    results: dict[str, dict] = {}
    models_alone = models_only(models, files)
    unfolded = inference.inference_network
    with tempfile.TemporaryDirectory(prefix="busai-throughput-") as tmp:
        root = Path(tmp)
        os.environ["BUSAI_PROBE"] = "0"
        inference.inference_network = lambda network: network  # batch norm unfolded, as before the fast path
        try:
            results["before"] = run_path("before", files, models, root, batch_size=1, workers=0)
        finally:
            inference.inference_network = unfolded
        results["batched"] = run_path("batched", files, models, root)
        os.environ["BUSAI_PROBE"], os.environ["BUSAI_CACHE_DIR"] = "1", str(root / "cache")
        results["batched-probe"] = run_path("batched-probe", files, models, root)
        results["batched-probe"]["chosen"] = json.loads((root / "batched-probe" / "predict_options.json").read_text())["runtime"]["paths"]
        os.environ["BUSAI_PROBE"] = "0"
        results["batched-no-overlays"] = run_path("batched-no-overlays", files, models, root, overlays=False)
        try:
            import onnxruntime  # noqa: F401

            onnx_models = pipeline.load_models("release", "release", backend="onnx", workdir=root)
            results["onnx"] = run_path("onnx", files, onnx_models, root)
        except ImportError:
            pass
        if args.baseline != "none":
            results["issue-33 baseline"] = baseline_path(args.baseline, files, root)
    peak = {"fp32": round(matmul_peak(torch.float32), 1)}
    if native_bf16():
        peak["bf16"] = round(matmul_peak(torch.bfloat16), 1)
    per_image = sum(gflops.values())
    for result in results.values():
        # The share of the machine's fp32 matmul peak the whole predict (models and the rest) reaches.
        result["fraction_of_flop_limit"] = round(result["images_per_second"] * per_image / peak["fp32"], 4)
    base = results["before"]["images_per_second"]
    baseline = results.get("issue-33 baseline", {}).get("images_per_second")
    for result in results.values():
        result["speedup_over_before"] = round(result["images_per_second"] / base, 3)
        if baseline:
            result["speedup_over_issue_baseline"] = round(result["images_per_second"] / baseline, 3)
    limits = {dtype: peak[dtype] / per_image for dtype in peak}
    models_alone["fraction_of_flop_limit"] = {dtype: round(models_alone["images_per_second"] / limit, 4) for dtype, limit in limits.items()}
    record = {
        "command": " ".join(
            [f"{k}={os.environ[k]}" for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)]
            + ["python benchmarks/predict_throughput.py", *sys.argv[1:]]
        ),
        "images": len(files),
        "data": [str(folder) for folder in folders],
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),  # the flags below a oneDNN ISA cap, where one is set
            "isa_cap": isa_cap(),
            "threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
        },
        "model_gflops_per_image": {k: round(v, 3) for k, v in gflops.items()},
        "matmul_peak_gflops": peak,
        "flop_limit_images_per_second": round(peak["fp32"] / per_image, 2),
        "paths": results,
        "models_only": models_alone,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    for name, result in results.items():
        print(
            f"{name:22s} {result['images_per_second']:8.2f} images/s  x{result['speedup_over_before']:.2f}  {result['fraction_of_flop_limit']:.1%} of the fp32 FLOP limit"
        )
    print(f"models only {models_alone['images_per_second']:.2f} images/s, of the FLOP limit: {models_alone['fraction_of_flop_limit']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
