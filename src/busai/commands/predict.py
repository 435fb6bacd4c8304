"""`busai predict`: masks, overlays, class probabilities and lesion measurements for images or folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from busai.config import BACKENDS, DEVICES


def register(sub) -> None:
    from busai.config import MASK_THRESHOLD, PREDICT_BATCH_SIZE as DEFAULT_BATCH_SIZE

    p = sub.add_parser(
        "predict",
        help="predict masks, classes and lesion measurements for images or folders",
        description="For each input NAME.ext write OUT/NAME_pred_mask.png (0/255, the input's size) and "
        "OUT/NAME_overlay.png, plus OUT/predictions.json and OUT/predictions.csv (one row per image). "
        "Models default to the released ones packaged with busai.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image or DICOM files and/or folders of them (DICOM found by content, with or without .dcm)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--seg", default="release", metavar="MODEL", help="segmentation model: release (default), a run folder, an exported .onnx file, or none")
    p.add_argument("--cls", default="release", metavar="MODEL", help="classification model: release (default), a run folder, an exported .onnx file, or none")
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="auto: PyTorch, or a release's model.onnx where ONNX Runtime measured faster here (else ONNX Runtime alone); onnx runs a model's model.onnx (or exports the model) in ONNX Runtime",
    )
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): the GPU when one is visible, else the CPU")
    p.add_argument(
        "--pixel-spacing",
        type=float,
        nargs="+",
        metavar="MM",
        help="pixel size in mm (one value, or row and column) for mm / mm2 measurements, "
        "used where a DICOM file states none (the spacing_source column says which was used)",
    )
    p.add_argument(
        "--frame",
        type=int,
        metavar="N",
        help="predict only frame N (from 1) of each file: of a DICOM cine or a multi-page TIFF (default: every frame); a file without frame N gets an error row",
    )
    p.add_argument(
        "--no-scan-region",
        dest="scan_region",
        action="store_false",
        help="give the models the whole image, even when it is a screenshot with the scan inside it",
    )
    p.add_argument(
        "--no-input-check",
        dest="gate",
        action="store_false",
        help="answer even for images the input gate flags as not a B-mode scan (input_check still says why)",
    )
    p.add_argument(
        "--save-probabilities", action="store_true", help="also write NAME_probability.png: the lesion probability map as 16-bit PNG (value / 65535)"
    )
    p.add_argument(
        "--dicom-seg", action="store_true", help="also write NAME_seg.dcm, the mask as a DICOM Segmentation, for single-frame DICOM inputs (needs busai[dicom])"
    )
    p.add_argument("--no-overlays", dest="overlays", action="store_false", help="write no NAME_overlay.png (faster; the overlay column stays empty)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"scans per forward pass (default {DEFAULT_BATCH_SIZE}); any size gives the same masks and rows",
    )
    p.add_argument("--threshold", type=float, default=MASK_THRESHOLD, help=f"lesion probability threshold for the mask (default {MASK_THRESHOLD})")
    p.add_argument(
        "--resume",
        action="store_true",
        help="OUT holds an earlier (e.g. interrupted) batch: keep its rows and predict only the images without one; without it such a folder is refused",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    p.add_argument("--json", action="store_true", help="print one JSON object with every prediction")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.io.scans import list_inputs
    from busai.prediction import predict_paths

    spacing = args.pixel_spacing[0] if args.pixel_spacing and len(args.pixel_spacing) == 1 else args.pixel_spacing
    _, skipped = list_inputs(args.inputs)
    rows = predict_paths(
        args.inputs,
        args.out,
        seg=args.seg,
        cls=args.cls,
        backend=args.backend,
        tta=args.tta,
        pixel_spacing=spacing,
        threshold=args.threshold,
        progress=not (args.quiet or args.json),
        resume=args.resume,
        device=args.device,
        frame=args.frame,
        scan_region=args.scan_region,
        gate=args.gate,
        save_probabilities=args.save_probabilities,
        dicom_seg=args.dicom_seg,
        overlays=args.overlays,
        batch_size=args.batch_size,
    )
    for path, why in skipped:  # after the run: a bad option is still the only line printed
        print(f"warning: left out {path}: {why}", file=sys.stderr)
    failed = [row for row in rows if row.get("error")]
    for row in failed:
        print(f"warning: skipped {row['error']}", file=sys.stderr)
    flagged = [row for row in rows if row["input_check"] not in (None, "ok")]
    for row in flagged:
        answered = "answered anyway (--no-input-check)" if row["label"] or row["mask"] else "no answer given"
        print(f"warning: {_name(row)} does not look like a B-mode ultrasound scan ({row['input_check']}); {answered}", file=sys.stderr)
    if args.dicom_seg:
        from busai.data.discover import TIFF_SUFFIXES

        for row in rows:
            tiff = Path(row["image"]).suffix.lower() in TIFF_SUFFIXES  # its pages are frames too, but no DICOM
            if row["frame"] is not None and row["mask"] and not row["dicom_seg"] and not row["error"] and not tiff:
                print(f"warning: {_name(row)}: no DICOM SEG for a frame of a multi-frame (cine) file; its PNG mask is written", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "out_dir": str(args.out),
                    "images": len(rows),
                    "failed": len(failed),
                    "flagged": len(flagged),
                    "left_out": [{"file": str(p), "why": why} for p, why in skipped],
                    "predictions": rows,
                }
            )
        )
    elif not args.quiet:
        _print_summary(rows, args.out)
    return 0 if len(failed) < len(rows) else 2


def _name(row: dict) -> str:
    name = Path(row["image"]).name
    return name if row.get("frame") is None else f"{name} frame {row['frame']}"


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
            table.add_row(_name(row), "[red]error", "", "", "", "", "")
            continue
        if row["input_check"] not in (None, "ok") and not row["label"]:
            table.add_row(_name(row), "[yellow]not a scan", "", "", "", "", "")
            continue
        p = row.get(f"p_{row['label']}") if row["label"] else None
        table.add_row(
            _name(row),
            text(row["label"]),
            text(p),
            text(row["area_px"]),
            text(row["area_mm2"]),
            text(row["longest_diameter_px"]),
            text(row["longest_diameter_mm"]),
        )
    console = Console()
    console.print(table)
    flagged = [Path(row["image"]).name for row in rows if row["review"]]
    if flagged:
        console.print(
            f"[yellow]review: the two models disagree on whether {len(flagged)} scan(s) show a lesion: "
            f"{', '.join(flagged)} (why: the review column of predictions.csv)"
        )
