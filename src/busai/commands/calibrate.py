"""`busai calibrate`: fit a classifier's temperature on validation images and store it with the model."""

from __future__ import annotations

import argparse
import json

from busai.commands import add_data_options, data_specs


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit temperature scaling on validation images; predict, serve and evaluate then use it",
        description="Fit one temperature T for a classifier run on the validation split only (never test), write "
        "RUN_DIR/calibration.json, and print the expected calibration error (ECE) before and after. Refuses fewer than 50 "
        "validation images and a fit at the search bound (T 0.05 or 20); a temperature that would raise the validation ECE "
        "is not stored (exit 0, the model stays raw; --json gives stored: false).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="classification run folder written by `busai train cls`")
    p.add_argument("--data", action="append", required=True, metavar="[NAME=]PATH", help="the run's dataset(s), as given to train")
    add_data_options(p)
    p.add_argument("--splits", required=True, metavar="FILE", help="the run's split file; its validation images are used")
    p.add_argument("--force", action="store_true", help="replace an existing calibration.json")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.calibration import fit_calibration

    result = fit_calibration(args.run_dir, data_specs(args), args.splits, force=args.force)
    if args.json:
        print(json.dumps(result))
    elif not result["stored"]:
        # Exit 0: the command answered its question (this model is better left raw); nothing is wrong with the input.
        print(
            f"{args.run_dir}: not calibrated: temperature {result['temperature']:.3f} would raise validation ECE "
            f"{result['ece_before']:.3f} -> {result['ece_after']:.3f}; the model keeps its raw probabilities (no calibration.json written)"
        )
    else:
        print(
            f"{args.run_dir}: temperature {result['temperature']:.3f} fitted on {result['images']} validation images; "
            f"validation ECE {result['ece_before']:.3f} -> {result['ece_after']:.3f}"
        )
    return 0
