"""`busai export`: a trained model as an ONNX file, checked against PyTorch."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX (dynamic batch and size) with a parity check",
        description="Export a run folder's best weights, or the packaged release model (seg / cls), to ONNX. "
        "The file carries its preprocessing, so `busai predict --seg FILE.onnx` runs it in ONNX Runtime.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, or seg / cls for the release model")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18; 17 to the newest torch writes)")
    p.add_argument("--fixed-size", action="store_true", help="fix height and width at the model's size (batch stays dynamic)")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not an earlier busai export")
    p.add_argument("--json", action="store_true", help="print the export result as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.export import OPSET, export_onnx
    from busai.release import resolve_model
    from busai.runs import load_model

    if args.model in ("seg", "cls"):
        loaded = resolve_model("release", args.model)
    else:
        loaded = load_model(args.model)
    result = export_onnx(loaded, args.out, opset=args.opset or OPSET, dynamic_size=not args.fixed_size, force=args.force)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        axes = "batch, height, width" if result.dynamic_size else "batch"
        verdict = "ok" if result.ok else f"FAILED (tolerance {result.tolerance:g})"
        print(f"{result.path}: {result.task}, opset {result.opset}, dynamic axes: {axes}")
        print(f"parity vs PyTorch fp32: max |difference| = {result.max_abs_diff:.3g} {verdict}")
    return 0 if result.ok else 1
