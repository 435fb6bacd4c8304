"""`busai evaluate`: score any model (run folder, release, release folder, .onnx) on any labelled data."""

from __future__ import annotations

import argparse
import json

from busai import SPLIT_NAMES
from busai.config import DEVICES


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on a split or on all of a dataset, with bootstrap 95%% CIs",
        description="Score a model on labelled data. MODEL is a run folder, 'release' (both packaged models), a release folder "
        "or an exported .onnx file. A dataset the model never trained on can be scored whole with --all (external validation); "
        "images the model trained on are refused.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, 'release', release folder or .onnx file")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="dataset folder or CSV manifest; repeat as NAME=PATH for several (each scored on its own, and pooled)",
    )
    p.add_argument("--splits", default=None, metavar="FILE", help="split JSON (from `busai data split`)")
    p.add_argument("--split", default=["test"], choices=SPLIT_NAMES, nargs="+", help="one or more splits of --splits (default: test)")
    p.add_argument("--all", dest="all_images", action="store_true", help="score every image of the data instead of a split")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where metrics.json and figures go (default: the run folder; required for release, release folders and .onnx)",
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (default 1000)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the sample and confusion-matrix figures")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation, as `busai predict --tta`; stored as <key>_tta")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): the GPU when one is visible, else the CPU")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.commands import command_line
    from busai.evaluation import evaluate_model
    from busai.report import print_metrics

    results = evaluate_model(
        args.model,
        args.data,
        splits_file=args.splits,
        split_names=args.split,
        all_images=args.all_images,
        out=args.out,
        n_boot=args.n_boot,
        figures=args.figures,
        tta=args.tta,
        command=command_line(args),
        device=args.device,
    )
    if args.json:
        flat = {f"{task}:{key}" if len(results) > 1 else key: r for task, by_key in results.items() for key, r in by_key.items()}
        print(json.dumps(next(iter(flat.values())) if len(flat) == 1 else flat, default=str))
    else:
        for by_key in results.values():
            for key, result in by_key.items():
                print_metrics(result, key)
    return 0
