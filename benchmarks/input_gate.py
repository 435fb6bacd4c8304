"""The input gate's false alarms on real scans, and what it catches among drawn non-scans.

Runs ``busai.input_check.check_input`` as ``busai predict`` does (on the scan region that
``busai.scan_region`` finds) over every image of BUSI and of BUS-UCLM, and over the drawn
non-ultrasound images of ``busai.data.not_ultrasound``. Writes ``results/input_gate.json``: per
dataset the images flagged (the false-alarm rate, as every image there is a scan) with their
reasons, and the range of each statistic the thresholds are compared with.

    python benchmarks/input_gate.py --busi ../shared/data/Dataset_BUSI_with_GT --bus-uclm ../shared/data/BUS-UCLM
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from busai import input_check
from busai.data.discover import IMAGE_SUFFIXES, MASK_RE, read_image
from busai.data.not_ultrasound import all_kinds
from busai.runs import write_json
from busai.scan_region import find_scan_region

THRESHOLDS = {
    name: getattr(input_check, name)
    for name in ("MIN_SIDE", "MAX_ASPECT", "MIN_STD", "MAX_COLOUR_SHARE", "MIN_TISSUE_SHARE", "MAX_BRIGHT_SHARE", "COLOURED", "BRIGHT")
}


def gate(image: np.ndarray) -> tuple[str, dict | None]:
    """What predict does: find the scan region, check the crop; and the crop's statistics."""
    crop = find_scan_region(image).crop(image)
    numbers = input_check.image_statistics(crop) if min(crop.shape[:2]) >= input_check.MIN_SIDE else None
    return input_check.check_input(crop, numbers), numbers


def gate_file(path: Path) -> tuple[str, dict | None]:
    return gate(read_image(path))


def scan_images(paths: list[Path], root: Path, workers: int) -> dict:
    from multiprocessing import Pool

    flagged, stats = [], []
    with Pool(workers) as pool:
        results = pool.map(gate_file, paths, chunksize=8)
    for path, (result, numbers) in zip(paths, results):
        if numbers:
            stats.append(numbers)
        if result != input_check.OK:
            flagged.append({"image": path.relative_to(root).as_posix(), "reason": result})
    keys = ("std", "colour_share", "tissue_share", "bright_share")
    ranges = {
        k: {q: round(float(np.quantile([s[k] for s in stats], p)), 4) for q, p in (("min", 0), ("p01", 0.01), ("median", 0.5), ("p99", 0.99), ("max", 1))}
        for k in keys
    }
    return {
        "images": len(paths),
        "flagged": len(flagged),
        "false_alarm_rate": round(len(flagged) / len(paths), 4),
        "flagged_images": flagged,
        "statistics": ranges,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", type=Path, required=True, help="BUSI folder (benign/, malignant/, normal/)")
    parser.add_argument("--bus-uclm", type=Path, required=True, help="BUS-UCLM folder (images/)")
    parser.add_argument("--out", type=Path, default=Path("results/input_gate.json"))
    parser.add_argument("--workers", type=int, default=2, help="processes (the result does not depend on it)")
    args = parser.parse_args()

    busi = sorted(p for p in args.busi.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not MASK_RE.match(p.stem))
    uclm = sorted(p for p in (args.bus_uclm / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    drawn = {}
    for seed in range(3):
        for name, image in all_kinds(seed).items():
            drawn.setdefault(name, []).append(gate(image)[0])
    write_json(
        args.out,
        {
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "thresholds": THRESHOLDS,
            "busi": scan_images(busi, args.busi, args.workers),
            "bus_uclm": scan_images(uclm, args.bus_uclm, args.workers),
            "drawn_non_ultrasound": {
                name: {"flagged": sum(r != input_check.OK for r in results), "of": len(results), "reasons": sorted(set(results))}
                for name, results in drawn.items()
            },
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
