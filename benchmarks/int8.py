"""INT8 CPU inference (``busai export --quantize int8``) beside the default path: speed and validation quality.

For each released model (segmentation, classification) this script quantizes it exactly as
``busai export --quantize int8`` does, calibrated on training images of ``--splits`` only, then

- times, in this one process, through ``busai.inference.predict_tensor`` on the same random
  batch with interleaved calls (median kept, as ``benchmarks/inference_speed.py`` does):
  ``fp32_eager``, ``default`` (the project's default path), ``onnxruntime_fp32`` and ``int8``;
- scores ``default``, ``fp32_eager`` and ``int8`` on the validation split (Dice, mean over images, for
  segmentation; accuracy and macro-F1 for classification), so the int8 speed is never read
  without the quality it costs; the test split is never touched;
- records which ONNX Runtime kernels took the time (``kernel_profile``): integer kernels
  (QLinearConv, ...) mean the int8 file really computes in int8.

Writes ``results/int8.json``.

    python benchmarks/int8.py --data ../shared/data/Dataset_BUSI_with_GT --splits splits/busi.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from busai.engine import default_path_name
from busai.export import export_onnx, load_onnx
from busai.inference import predict_tensor
from busai.quantize import calibration_records, kernel_profile, quantize_int8
from busai.release import resolve_model
from busai.runs import best_threads, library_versions, machine_info

sys.path.insert(0, str(Path(__file__).parent))
from inference_speed import ms_per_image

TARGET_SPEEDUP, TARGET_DICE_DROP = 2.0, 0.005


class Fp32Only(torch.nn.Module):
    """A module that computes in fp32 whatever autocast the caller sets (evaluate runs the default path)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return self.inner(x.float())


def validation_scores(loaded, records) -> dict:
    """Validation quality of one path: mean Dice and IoU (segmentation) or accuracy and macro-F1."""
    from busai.evaluation import evaluate_classification, evaluate_segmentation

    evaluate = evaluate_segmentation if loaded.task == "segmentation" else evaluate_classification
    report, _ = evaluate(loaded, records, n_boot=200, seed=0)
    if loaded.task == "segmentation":
        return {"dice_mean": round(report["dice"]["mean"]["value"], 5), "iou_mean": round(report["iou"]["mean"]["value"], 5)}
    return {"accuracy": round(report["accuracy"]["value"], 5), "macro_f1": round(report["macro_f1"]["value"], 5)}


def benchmark_task(task: str, args, tmp: Path) -> dict:
    from busai.data.splits import load_split_records

    loaded = resolve_model("release", task)
    calibration, parity = calibration_records(args.data, args.splits, count=args.calib_images, seed=0)
    int8 = quantize_int8(loaded, tmp / f"{task}_int8.onnx", calibration, parity, provenance={"calibration_split": "train"})
    fp32_onnx = load_onnx(export_onnx(copy.deepcopy(loaded), tmp / f"{task}_fp32.onnx", dynamic_size=False).path)
    int8_model = load_onnx(int8.path)

    def copy_of(memory_format=torch.preserve_format):
        return dataclasses.replace(loaded, module=copy.deepcopy(loaded.module).to(memory_format=memory_format))

    fp32, fast = copy_of(torch.contiguous_format), copy_of()
    size = loaded.image_size
    x = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    paths = {
        "fp32_eager": lambda b: predict_tensor(fp32, b, precision="fp32"),
        "default": lambda b: predict_tensor(fast, b),
        "onnxruntime_fp32": lambda b: predict_tensor(fp32_onnx, b),
        "int8": lambda b: predict_tensor(int8_model, b),
    }
    timings = ms_per_image(paths, x, args.warmup, args.iters)
    speed = {
        name: {"ms_per_image_median": round(statistics.median(t), 2), "images_per_s": round(1000 / statistics.median(t), 2)} for name, t in timings.items()
    }
    for name, row in speed.items():
        print(f"{task} {name}: {row['ms_per_image_median']} ms/image", flush=True)

    val = load_split_records(args.data, args.splits, "val")
    quality = {
        "fp32_eager": validation_scores(dataclasses.replace(fp32, module=Fp32Only(fp32.module).eval()), val),
        "default": validation_scores(fast, val),
        "int8": validation_scores(int8_model, val),
    }
    key = "dice_mean" if task == "segmentation" else "accuracy"
    result = {
        "model": loaded.spec,
        "image_size": size,
        "speed": speed,
        "validation": quality,
        "int8_speedup_vs_default": round(speed["default"]["ms_per_image_median"] / speed["int8"]["ms_per_image_median"], 2),
        "int8_speedup_vs_onnxruntime_fp32": round(speed["onnxruntime_fp32"]["ms_per_image_median"] / speed["int8"]["ms_per_image_median"], 2),
        f"int8_{key}_drop_vs_default": round(quality["default"][key] - quality["int8"][key], 5),
        f"int8_{key}_drop_vs_fp32": round(quality["fp32_eager"][key] - quality["int8"][key], 5),
        "int8_export": int8.to_dict() | {"path": f"{task}_int8.onnx"},
        "kernel_time_share": {"int8": kernel_profile(int8.path, x.numpy()), "onnxruntime_fp32": kernel_profile(fp32_onnx.source, x.numpy())},
        "validation_images": len(val),
    }
    print(f"{task}: int8 {result['int8_speedup_vs_default']}x the default path, {key} {quality['int8'][key]} vs {quality['default'][key]}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="BUSI folder")
    parser.add_argument("--splits", required=True, help="split file the release models were trained with (calibration: its train split; scores: its val split)")
    parser.add_argument("--tasks", nargs="+", default=["segmentation", "classification"])
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=1, help="images per timed call (default 1, as `busai predict` runs)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and ONNX Runtime threads (default: every core); 1 keeps a machine shared with other jobs from stalling multi-threaded kernels",
    )
    parser.add_argument("--out", default="results/int8.json")
    args = parser.parse_args()
    best_threads()
    if args.threads:
        import busai.export

        torch.set_num_threads(args.threads)
        busai.export._cores = lambda: args.threads  # the ONNX Runtime sessions' intra-op threads

    with tempfile.TemporaryDirectory(prefix="busai-int8-bench-") as tmp:
        tasks = {task: benchmark_task(task, args, Path(tmp)) for task in args.tasks}
    seg = tasks.get("segmentation")
    summary = {
        "command": "python benchmarks/int8.py " + shlex.join(sys.argv[1:]),
        "tasks": tasks,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "iters": args.iters,
        "target": {"speedup_vs_default": TARGET_SPEEDUP, "max_dice_drop": TARGET_DICE_DROP},
        "target_met": None if seg is None else (seg["int8_speedup_vs_default"] >= TARGET_SPEEDUP and seg["int8_dice_mean_drop_vs_default"] <= TARGET_DICE_DROP),
        "load_average_at_end": list(os.getloadavg()),
        "default_path": default_path_name(),
        **machine_info(),
        "versions": library_versions() | {"onnxruntime": _ort_version()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(summary, indent=2) + "\n")
    tmp_out.replace(out)
    print(f"target (>= {TARGET_SPEEDUP}x the default path at a Dice drop <= {TARGET_DICE_DROP}): {'met' if summary['target_met'] else 'NOT met'}")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
