"""Does a scanner screenshot get the bare scan's answer? The scan-region crop, measured on BUSI test.

Each BUSI test image (``splits/busi.json``) is pasted into a synthetic 1280 x 960 scanner screen
(``busai.data.scanner_frame``: patient text, settings, depth ruler, grey and colour bars,
calipers on the scan) and predicted with the release models twice: on the whole screen (the
models as they were) and with the scan-region crop ``busai predict`` applies by default. Each is
compared with the prediction on the bare image: class agreement, and the Dice of the lesion mask
(inside the pasted area) against the bare image's mask, both empty counting 1. Also reported:
the found region's IoU with the pasted area, and whether the crop leaves bare images untouched.
The input gate is off here so every image gets an answer to compare. Writes ``results/framing.json``.

    python benchmarks/framing.py --data ../shared/data/Dataset_BUSI_with_GT --splits splits/busi.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from busai.data.discover import read_image
from busai.data.scanner_frame import frame_scan
from busai.pipeline import load_models
from busai.rendering import predict_array
from busai.runs import write_json
from busai.scan_region import find_scan_region


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def box_iou(found, box) -> float:
    x0, y0, x1, y1 = box
    ix = max(0, min(x1, found.x1) - max(x0, found.x0))
    iy = max(0, min(y1, found.y1) - max(y0, found.y0))
    inter = ix * iy
    return inter / ((x1 - x0) * (y1 - y0) + found.width * found.height - inter)


def inside(mask: np.ndarray, box, shape) -> np.ndarray:
    """The framed mask's pixels over the pasted scan, at the bare image's size."""
    x0, y0, x1, y1 = box
    part = mask[y0:y1, x0:x1]
    if part.shape != tuple(shape):  # the scan was shrunk to fit the screen
        part = np.asarray(Image.fromarray(part * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 0
    return part


def summary(agree: list[bool], dices: list[float]) -> dict:
    return {
        "class_agreement": round(float(np.mean(agree)), 4),
        "mean_dice_vs_bare": round(float(np.mean(dices)), 4),
        "median_dice_vs_bare": round(float(np.median(dices)), 4),
        "min_dice_vs_bare": round(float(np.min(dices)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="BUSI folder (benign/, malignant/, normal/)")
    parser.add_argument("--splits", type=Path, default=Path("splits/busi.json"))
    parser.add_argument("--out", type=Path, default=Path("results/framing.json"))
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: {args.data}: not found; pass the BUSI folder")
    keys = json.loads(args.splits.read_text())["test"]
    models = load_models("release", "release")

    per_image, stats = [], {"whole_screen": ([], []), "scan_region": ([], []), "bare_with_crop": ([], [])}
    ious = []
    for i, key in enumerate(keys):
        image = read_image(args.data / key)
        bare, bare_mask = predict_array(models, image, scan_region=False, gate=False)
        bare_auto, bare_auto_mask = predict_array(models, image, scan_region=True, gate=False)
        screen, box = frame_scan(image, seed=i)
        whole, whole_mask = predict_array(models, screen, scan_region=False, gate=False)
        cropped, cropped_mask = predict_array(models, screen, scan_region=True, gate=False)
        ious.append(box_iou(find_scan_region(screen), box))
        entry = {"image": key, "bare": bare["label"], "region_iou": round(ious[-1], 4)}
        for name, row, mask in (
            ("whole_screen", whole, inside(whole_mask, box, image.shape[:2])),
            ("scan_region", cropped, inside(cropped_mask, box, image.shape[:2])),
            ("bare_with_crop", bare_auto, bare_auto_mask),
        ):
            stats[name][0].append(row["label"] == bare["label"])
            stats[name][1].append(dice(mask, bare_mask))
            entry[name] = {"label": row["label"], "dice_vs_bare": round(stats[name][1][-1], 4)}
        per_image.append(entry)
        print(
            f"{i + 1}/{len(keys)} {key}: bare {bare['label']}, screen {whole['label']}, cropped {cropped['label']} "
            f"(Dice {entry['scan_region']['dice_vs_bare']:.3f})",
            file=sys.stderr,
        )

    write_json(
        args.out,
        {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "images": len(keys),
            "models": "release (busai/release)",
            "targets": {"class_agreement": 0.95, "mean_dice_vs_bare": 0.9},
            "framed_whole_screen": summary(*stats["whole_screen"]),
            "framed_scan_region": summary(*stats["scan_region"]),
            "bare_with_scan_region_vs_bare": summary(*stats["bare_with_crop"]),
            "region_iou_with_pasted_area": {"mean": round(float(np.mean(ious)), 4), "min": round(float(np.min(ious)), 4)},
            "per_image": per_image,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
