"""How well the released classifier's probabilities match its accuracy, on validation and test.

Runs the packaged classifier over the split's images of each dataset and writes, per split and
dataset (and pooled over several), with its stored temperature and without it, the expected
calibration error (busai.calibration's equal-width bins of the predicted class's probability, the
bins ``busai evaluate`` and ``busai calibrate`` use), the Brier score and a reliability diagram. Writes ``results/release_calibration.json`` and
``results/classification/figures/release_calibration_<split>.png`` (one curve per dataset,
calibrated); docs/model-card.md cites it.

    python benchmarks/release_calibration.py --data busi=../shared/data/Dataset_BUSI_with_GT --data uclm=../shared/data/BUS-UCLM --splits splits/busi-uclm.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from busai import CLASSES
from busai.calibration import N_BINS, expected_calibration_error, reliability_bins, reliability_figure
from busai.data.splits import load_split_records, read_splits
from busai.evaluation import predict_records
from busai.release import release_dir, resolve_model
from busai.runs import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]


def calibration(labels: np.ndarray, probs: np.ndarray) -> dict:
    correct = (probs.argmax(axis=1) == labels).astype(float)
    ece = expected_calibration_error(probs, labels)
    brier = float(np.mean(np.sum((probs - np.eye(len(CLASSES))[labels]) ** 2, axis=1)))
    return {
        "images": int(len(labels)),
        "accuracy": round(float(correct.mean()), 4),
        "mean_confidence": round(float(probs.max(axis=1).mean()), 4),
        f"ece_{N_BINS}_bins": round(ece, 4),
        "brier": round(brier, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, action="append", metavar="[NAME=]PATH", help="dataset folder; repeat as NAME=PATH for several")
    parser.add_argument("--splits", required=True, help="split file, e.g. splits/busi-uclm.json")
    parser.add_argument("--split", nargs="+", default=["val", "test"], help="splits to score (default val test)")
    parser.add_argument("--out", default=str(ROOT / "results" / "release_calibration.json"))
    args = parser.parse_args(argv)
    model = resolve_model("release", "classification")
    splits = read_splits(args.splits)
    result = {
        "command": "python benchmarks/release_calibration.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "model": "release",
        "run": json.loads((release_dir("classification") / "scores.json").read_text())["run"],
        "temperature": model.temperature,
        "precision": "fp32",
        "machine": machine_info(),
    }
    for split in args.split:
        records = load_split_records(args.data, splits, split)
        # fp32: the reference every machine reproduces, as the release's scores.json (scripts/release_scores.py)
        raw = np.stack([p.numpy() for _, p in predict_records(model, records, calibrated=False, precision="fp32")])
        calibrated = np.stack([p.numpy() for _, p in predict_records(model, records, precision="fp32")])
        labels = np.array([CLASSES.index(r.label) for r in records])
        names = list(dict.fromkeys(r.dataset for r in records))
        groups = {name or "all": np.array([r.dataset == name for r in records]) for name in names}
        if len(names) > 1:
            groups["pooled"] = np.ones(len(records), bool)
        curves, result[split] = {}, {}
        for name, keep in groups.items():
            entry = calibration(labels[keep], calibrated[keep])
            entry["ece_uncalibrated"] = round(expected_calibration_error(raw[keep], labels[keep]), 4)
            result[split][name] = entry
            curves[f"{name} (ECE {entry[f'ece_{N_BINS}_bins']:.3f})"] = reliability_bins(calibrated[keep], labels[keep])
            print(split, name, entry)
        path = ROOT / "results" / "classification" / "figures" / f"release_calibration_{split}.png"
        figure = reliability_figure(curves, path, f"released classifier, temperature {model.temperature:.2f}: {split}")
        result[split]["figure"] = str(Path(figure).relative_to(ROOT)) if Path(figure).is_relative_to(ROOT) else str(figure)
    write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
