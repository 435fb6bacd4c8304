"""`busai evaluate`: score a run folder on a split (metrics.json + figures)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run on train / val / test with bootstrap 95%% CIs")
    p.add_argument("run_dir", help="run folder written by `busai train`")
    p.add_argument("--data", required=True, help="dataset folder (BUSI layout)")
    p.add_argument("--splits", required=True, help="split JSON used for training")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], nargs="+", help="one or more splits (default test)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--no-figures", dest="figures", action="store_false")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation, as `busai predict --tta`; stored as <split>_tta in metrics.json")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto (default): the GPU when one is visible, else the CPU")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.commands import command_line
    from busai.evaluate import evaluate_run
    from busai.report import print_metrics

    splits = args.split if isinstance(args.split, list) else [args.split]
    results = {}
    for split in splits:
        results[split] = evaluate_run(args.run_dir, args.data, args.splits, split, n_boot=args.n_boot, figures=args.figures, tta=args.tta, command=command_line(args), device=args.device)
    if args.json:
        print(json.dumps(results[splits[0]] if len(splits) == 1 else results, default=str))
    else:
        for result in results.values():
            print_metrics(result)
    return 0
