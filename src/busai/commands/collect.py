"""`busai collect`: one results/<task>/<run>.json per evaluated run folder (what docs/results.md and reports read)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    c = sub.add_parser("collect", help="write results/<task>/<run>.json from evaluated run folders (the inputs of docs/results.md)")
    c.add_argument("run_dirs", nargs="+", metavar="RUN", help="evaluated run folders")
    c.add_argument("--out", required=True, metavar="DIR", help="results folder, e.g. results/segmentation")
    c.set_defaults(handler=collect)


def collect(args: argparse.Namespace) -> int:
    from busai.report import write_results

    for path in write_results(args.run_dirs, args.out):
        print(path)
    return 0
