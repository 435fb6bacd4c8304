"""INT8 CPU inference (``busai export --quantize int8``) beside the default path: speed and validation quality.

For each released model (segmentation, classification) this script quantizes it exactly as
``busai export --quantize int8`` does, calibrated on training images of ``--splits`` only: once
with every layer int8 (``int8``), and once per ``--keep-fp32`` value (``int8_keep_auto``,
``int8_keep_N``: the most sensitive layers left fp32, ``auto`` choosing how many on held-out
*training* images). Then it

- times, in this one process, through ``busai.inference.predict_tensor`` on the same random
  batch with interleaved calls (median kept, as ``benchmarks/inference_speed.py`` does):
  ``fp32_eager``, ``default`` (the project's default path), ``onnxruntime_fp32`` and each int8 file;
- scores ``fp32_eager``, ``default`` and each int8 file on the validation split (Dice, mean over images, for
  segmentation; accuracy and macro-F1 for classification), so the int8 speed is never read
  without the quality it costs; the test split is never touched;
- records which ONNX Runtime kernels took the time (``kernel_profile``): integer kernels
  (QLinearConv, ...) mean the int8 file really computes in int8.

Writes ``results/int8.json``. Speed ratios measured on a machine shared with other jobs are
noisy; the file records the load average before and after.

    python benchmarks/int8.py --data busi=../shared/data/Dataset_BUSI_with_GT uclm=../shared/data/BUS-UCLM --splits splits/busi-uclm.json
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
from busai.quantize import MAX_DROP, SELECTION_IMAGES, calibration_records, kernel_profile, quantize_int8
from busai.release import resolve_model
from busai.runs import best_threads, library_versions, machine_info

sys.path.insert(0, str(Path(__file__).parent))
from inference_speed import ms_per_image

TARGET_SPEEDUP = 2.0  # issue 33: >= 2x the fp32 speed (ONNX Runtime fp32, the faster fp32 path here) ...
TARGET_DROP = MAX_DROP  # ... at <= 0.01 validation Dice (segmentation) / accuracy (classification) drop


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
    calibration, held_out = calibration_records(args.data, args.splits, count=args.calib_images, seed=0, held_out=SELECTION_IMAGES)
    exports = {}
    for keep in ["0", *args.keep_fp32]:
        name = "int8" if keep == "0" else f"int8_keep_{keep}"
        exports[name] = quantize_int8(
            loaded, tmp / f"{task}_{name}.onnx", calibration, held_out, provenance={"calibration_split": "train"}, keep_fp32=keep, selection_records=held_out
        )
    fp32_onnx = load_onnx(export_onnx(copy.deepcopy(loaded), tmp / f"{task}_fp32.onnx", dynamic_size=False).path)
    int8_models = {name: load_onnx(result.path) for name, result in exports.items()}

    def copy_of(memory_format=torch.preserve_format):
        return dataclasses.replace(loaded, module=copy.deepcopy(loaded.module).to(memory_format=memory_format))

    fp32, fast = copy_of(torch.contiguous_format), copy_of()
    size = loaded.image_size
    x = torch.randn(args.batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    paths = {
        "fp32_eager": lambda b: predict_tensor(fp32, b, precision="fp32"),
        "default": lambda b: predict_tensor(fast, b),
        "onnxruntime_fp32": lambda b: predict_tensor(fp32_onnx, b),
        **{name: (lambda b, m=model: predict_tensor(m, b)) for name, model in int8_models.items()},
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
        **{name: validation_scores(model, val) for name, model in int8_models.items()},
    }
    key = "dice_mean" if task == "segmentation" else "accuracy"
    rows = {}
    for name, result in exports.items():
        ms = speed[name]["ms_per_image_median"]
        rows[name] = {
            "images_per_s": speed[name]["images_per_s"],
            "speedup_vs_onnxruntime_fp32": round(speed["onnxruntime_fp32"]["ms_per_image_median"] / ms, 2),
            "speedup_vs_default": round(speed["default"]["ms_per_image_median"] / ms, 2),
            f"val_{key}": quality[name][key],
            f"val_{key}_drop_vs_fp32": round(quality["fp32_eager"][key] - quality[name][key], 5),
            "layers_kept_fp32": len(result.kept_fp32),
        }
        rows[name]["target_met"] = rows[name]["speedup_vs_onnxruntime_fp32"] >= TARGET_SPEEDUP and rows[name][f"val_{key}_drop_vs_fp32"] <= TARGET_DROP
        print(f"{task} {name}: {rows[name]}", flush=True)
    return {
        "model": loaded.spec,
        "image_size": size,
        "speed": speed,
        "validation": quality,
        "int8_rows": rows,
        "int8_exports": {name: result.to_dict() | {"path": Path(result.path).name} for name, result in exports.items()},
        "kernel_time_share": {
            **{name: kernel_profile(result.path, x.numpy()) for name, result in exports.items()},
            "onnxruntime_fp32": kernel_profile(fp32_onnx.source, x.numpy()),
        },
        "validation_images": len(val),
    }


def cpu_flags() -> list[str]:
    """The CPU's vector / matrix flags that decide the int8 and bf16 kernels."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [flag for flag in wanted if flag in flags]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, nargs="+", help="dataset folder(s) of the split file: DIR, or NAME=DIR for each")
    parser.add_argument("--splits", required=True, help="split file the release models were trained with (calibration: its train split; scores: its val split)")
    parser.add_argument("--tasks", nargs="+", default=["segmentation", "classification"])
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--keep-fp32", nargs="*", default=["auto"], help="per-layer rows: --keep-fp32 values besides 0 (every layer int8)")
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
    load_before = list(os.getloadavg())
    if args.threads:
        import busai.backends
        import busai.device

        torch.set_num_threads(args.threads)
        busai.backends.cores = busai.device.cores = lambda: args.threads  # the ONNX Runtime sessions' intra-op threads

    with tempfile.TemporaryDirectory(prefix="busai-int8-bench-") as tmp:
        tasks = {task: benchmark_task(task, args, Path(tmp)) for task in args.tasks}
    summary = {
        "command": "python benchmarks/int8.py " + shlex.join(sys.argv[1:]),
        "tasks": tasks,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "iters": args.iters,
        "target": {"speedup_vs_onnxruntime_fp32": TARGET_SPEEDUP, "max_val_drop_vs_fp32": TARGET_DROP},
        "target_met": {task: [name for name, row in result["int8_rows"].items() if row["target_met"]] for task, result in tasks.items()},
        "note": "speed ratios come from one run on a machine shared with other jobs (see the load averages); read them as rough",
        "load_average_before": load_before,
        "load_average_at_end": list(os.getloadavg()),
        "default_path": default_path_name(),
        **machine_info(),
        "cpu_flags": cpu_flags(),
        "versions": library_versions() | {"onnxruntime": _ort_version()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(summary, indent=2) + "\n")
    tmp_out.replace(out)
    print(f"target (>= {TARGET_SPEEDUP}x ONNX Runtime fp32 at a validation drop <= {TARGET_DROP}) met by: {summary['target_met']}")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
