"""`busai export`: a trained model as an ONNX file, checked against PyTorch."""

from __future__ import annotations

import argparse
import json

from busai.config import MODEL_TASKS, ONNX_OPSET, QUANTIZE_CALIB_IMAGES


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (dynamic batch and size) with a parity check",
        description="Export a run folder's best weights, or the packaged release model (seg / cls), to ONNX. "
        "The file carries its preprocessing, so `busai predict --seg FILE.onnx` runs it in ONNX Runtime.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder or saved model folder, or seg / cls for the release model")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    p.add_argument("--task", choices=MODEL_TASKS, default=None, help="a multitask run: which of its outputs to export (seg masks or cls classes)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {ONNX_OPSET}; 17 to the newest torch writes)")
    p.add_argument("--fixed-size", action="store_true", help="fix height and width at the model's size (batch stays dynamic)")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not an earlier busai export")
    p.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="int8: static INT8 quantization in ONNX Runtime (QDQ), calibrated on training images only; for CPU inference",
    )
    p.add_argument("--calib-data", metavar="DIR", help="--quantize: dataset folder to calibrate on (default: the one the run trained on)")
    p.add_argument("--calib-splits", metavar="FILE", help="--quantize: split file whose train split is used (default: the run's own)")
    p.add_argument(
        "--calib-images",
        type=int,
        default=QUANTIZE_CALIB_IMAGES,
        metavar="N",
        help=f"--quantize: training images to calibrate on (default {QUANTIZE_CALIB_IMAGES})",
    )
    p.add_argument("--json", action="store_true", help="print the export result as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from busai.api import load, model_for
    from busai.errors import CheckpointError
    from busai.export import OPSET

    if args.model in ("seg", "cls"):
        model = model_for("release", args.model)
    elif Path(args.model).expanduser().is_dir() or Path(args.model).suffix.lower() == ".onnx":
        # A run folder, a folder from Model.save / busai release (an .onnx file is refused below); --task: a multitask run's output.
        model = load(args.model, task=args.task, device="cpu")
    else:
        raise CheckpointError(f"{args.model}: not found; pass a run folder (or a saved model folder), or seg / cls for the release model")
    if args.quantize:
        return _quantize(model.loaded, args)
    elif args.calib_data or args.calib_splits:
        from busai.errors import ConfigError

        raise ConfigError("--calib-data / --calib-splits only apply with --quantize int8")
    result = model.export(args.out, opset=args.opset or OPSET, dynamic_size=not args.fixed_size, force=args.force)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        axes = "batch, height, width" if result.dynamic_size else "batch"
        verdict = "ok" if result.ok else f"FAILED (tolerance {result.tolerance:g})"
        print(f"{result.path}: {result.task}, opset {result.opset}, dynamic axes: {axes}")
        print(f"parity vs PyTorch fp32: max |difference| = {result.max_abs_diff:.3g} {verdict}")
    return 0 if result.ok else 1


def _quantize(loaded, args: argparse.Namespace) -> int:
    from busai.models.weights import file_sha256
    from busai.quantize import calibration_records, calibration_source, quantize_int8

    data_dir, splits_file = calibration_source(loaded, args.calib_data, args.calib_splits)
    calibration, parity = calibration_records(data_dir, splits_file, count=args.calib_images)
    provenance = {"calibration_split": "train", "calibration_splits_sha256": file_sha256(splits_file)}
    result = quantize_int8(loaded, args.out, calibration, parity, dynamic_size=not args.fixed_size, provenance=provenance)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        verdict = "ok" if result.ok else f"FAILED (tolerance {result.tolerance:g})"
        print(f"{result.path}: {result.task}, int8 (QDQ), calibrated on {result.calibration_images} training images of {splits_file}")
        print(
            f"vs PyTorch fp32 on {result.parity_images} other training images: mean |probability difference| = {result.mean_abs_probability_diff:.3g} {verdict}"
        )
    return 0 if result.ok else 1
