"""`busai predict`: masks, overlays, class probabilities and lesion measurements for images or folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="predict masks, classes and lesion measurements for images or folders",
        description="For each input NAME.ext write OUT/NAME_pred_mask.png (0/255, the input's size) and "
        "OUT/NAME_overlay.png, plus OUT/predictions.json and OUT/predictions.csv (one row per image). "
        "Models default to the released ones packaged with busai.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--seg", default="release", metavar="MODEL", help="segmentation model: release (default), a run folder, an exported .onnx file, or none")
    p.add_argument("--cls", default="release", metavar="MODEL", help="classification model: release (default), a run folder, an exported .onnx file, or none")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"], help="onnx exports the models and runs them in ONNX Runtime")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (default): the GPU when one is visible, else the CPU")
    p.add_argument("--pixel-spacing", type=float, nargs="+", metavar="MM", help="pixel size in mm (one value, or row and column) for mm / mm2 measurements")
    p.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold for the mask (default 0.5)")
    p.add_argument("--resume", action="store_true", help="OUT holds an earlier (e.g. interrupted) batch: keep its rows and predict only "
                   "the images without one; without it such a folder is refused")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    p.add_argument("--json", action="store_true", help="print one JSON object with every prediction")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.predict import predict_paths

    spacing = args.pixel_spacing[0] if args.pixel_spacing and len(args.pixel_spacing) == 1 else args.pixel_spacing
    rows = predict_paths(
        args.inputs, args.out, seg=args.seg, cls=args.cls, backend=args.backend, tta=args.tta,
        pixel_spacing=spacing, threshold=args.threshold, progress=not (args.quiet or args.json), resume=args.resume, device=args.device,
    )
    failed = [row for row in rows if row.get("error")]
    for row in failed:
        print(f"warning: skipped {row['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps({"out_dir": str(args.out), "images": len(rows), "failed": len(failed), "predictions": rows}))
    elif not args.quiet:
        _print_summary(rows, args.out)
    return 0 if len(failed) < len(rows) else 2


def _print_summary(rows: list[dict], out_dir: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} images -> {out_dir}")
    for name in ("image", "label", "p(label)", "area px", "area mm2", "diameter px", "diameter mm"):
        table.add_column(name)

    def text(value) -> str:
        return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    for row in rows:
        if row["error"]:
            table.add_row(Path(row["image"]).name, "[red]error", "", "", "", "", "")
            continue
        p = row.get(f"p_{row['label']}") if row["label"] else None
        table.add_row(Path(row["image"]).name, text(row["label"]), text(p), text(row["area_px"]), text(row["area_mm2"]),
                      text(row["longest_diameter_px"]), text(row["longest_diameter_mm"]))
    console = Console()
    console.print(table)
    flagged = [Path(row["image"]).name for row in rows if row["review"]]
    if flagged:
        console.print(f"[yellow]review: the two models disagree on whether {len(flagged)} scan(s) show a lesion: "
                      f"{', '.join(flagged)} (why: the review column of predictions.csv)")
