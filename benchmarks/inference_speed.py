"""Inference speed of a segmentation model at its own size: fp32 eager vs the default path vs ONNX Runtime.

All three run in this one process, through the same ``busai.inference.predict_tensor`` call that
``busai predict`` uses, on the same random batch, each after the same warm-up. Timed calls are
interleaved (one call of each path in turn) and the median is kept, so a moment of load from
another process does not favour one path:

- ``fp32_eager``: PyTorch fp32, contiguous memory format;
- ``default``: the project's default path (channels_last, with bf16 autocast where the CPU has
  native bf16; ``default_path`` in the output says which);
- ``onnxruntime``: the model exported by ``busai export`` (fp32 graph, all graph optimisations).

Each path's largest absolute probability difference from fp32 eager is recorded too, so speed is
never bought with silently different masks. Writes ``results/inference_speed.json``.

    python benchmarks/inference_speed.py --model release
    python benchmarks/inference_speed.py --model runs/seg-lite0-unet --iters 50
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from busai.export import export_onnx, load_onnx
from busai.inference import predict_tensor
from busai.release import resolve_model
from busai.engine import default_path_name
from busai.runs import best_threads, library_versions, machine_info

TARGET_SPEEDUP = 3.0


def ms_per_image(paths: dict, x: torch.Tensor, warmup: int, iters: int) -> dict[str, list[float]]:
    """Per-call ms/image for every path, interleaved call by call so a load spike hits all paths alike."""
    for run in paths.values():
        for _ in range(warmup):
            run(x)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(iters):
        for name, run in paths.items():
            start = time.perf_counter()
            run(x)
            times[name].append((time.perf_counter() - start) * 1000 / x.shape[0])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="release", help="release (default), a segmentation run folder")
    parser.add_argument("--batch-size", type=int, default=1, help="images per call (default 1, as `busai predict` runs)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", default="results/inference_speed.json")
    args = parser.parse_args()
    best_threads()

    loaded = resolve_model(args.model, "segmentation")
    size = loaded.image_size
    x = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))

    def copy_of(memory_format=torch.preserve_format):
        return dataclasses.replace(loaded, module=copy.deepcopy(loaded.module).to(memory_format=memory_format))

    # Separate copies: the default path converts its module to channels_last in place.
    fp32, fast = copy_of(torch.contiguous_format), copy_of()
    with tempfile.TemporaryDirectory() as tmp:
        export = export_onnx(copy_of(), Path(tmp) / "seg.onnx", dynamic_size=False)
        ort = load_onnx(export.path)
        paths = {
            "fp32_eager": lambda b: predict_tensor(fp32, b, precision="fp32"),
            "default": lambda b: predict_tensor(fast, b),
            "onnxruntime": lambda b: predict_tensor(ort, b),
        }
        reference = paths["fp32_eager"](x)
        timings = ms_per_image(paths, x, args.warmup, args.iters)
        results = {}
        for name, times in timings.items():
            results[name] = {
                "ms_per_image_median": round(statistics.median(times), 2),
                "ms_per_image_min": round(min(times), 2),
                "ms_per_image_mean": round(statistics.fmean(times), 2),
                "max_abs_probability_diff_vs_fp32": round(float((paths[name](x) - reference).abs().max()), 5),
            }
            print(f"{name}: {results[name]['ms_per_image_median']} ms/image (median of {args.iters})", flush=True)

    base = results["fp32_eager"]["ms_per_image_median"]
    speedups = {name: round(base / r["ms_per_image_median"], 2) for name, r in results.items()}
    fastest = max(speedups, key=speedups.get)
    summary = {
        "command": "python benchmarks/inference_speed.py " + shlex.join(sys.argv[1:]),
        "model": loaded.spec,
        "source": loaded.source,
        "image_size": size,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "iters": args.iters,
        "results": results,
        "speedup_vs_fp32_eager": speedups,
        "fastest": fastest,
        "target_speedup": TARGET_SPEEDUP,
        "target_met": speedups[fastest] >= TARGET_SPEEDUP,
        "onnx_parity_max_abs_logit_diff": export.max_abs_diff,
        "default_path": default_path_name(),
        **machine_info(),
        "versions": library_versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"fastest: {fastest}, {speedups[fastest]}x fp32 eager (target {TARGET_SPEEDUP}x: {'met' if summary['target_met'] else 'NOT met'})")


if __name__ == "__main__":
    main()
