"""`busai report`: the study's report from run folders, results folders and tuning studies."""

from __future__ import annotations

import argparse

from busai import SPLIT_NAMES


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md and a self-contained report.html from runs, results folders and tuning studies",
        description="The study's report: dataset audit, split tables, tuned hyper-parameters, segmentation and classification "
        "tables with CIs beside the paper's, confusion matrices, calibration, training curves, sample predictions, "
        "weight source and training cost per run. Nothing is recomputed: numbers are read from the inputs.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN_OR_STUDY",
        help="run folders, folders of run folders, results folders (with segmentation/, classification/, tuning/), result files or tuning study folders",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write report.md, report.html and figures/ into")
    p.add_argument(
        "--audit", metavar="DATA_DIR_OR_JSON", help="dataset folder to audit, or the JSON of `busai data audit DIR --json` (default: no audit section)"
    )
    p.add_argument("--splits", nargs="+", default=[], metavar="FILE", help="split files to tabulate besides those the runs name (default: none)")
    p.add_argument("--title", default="busai report", help="report title (default 'busai report')")
    p.add_argument(
        "--sample-splits",
        nargs="+",
        default=["test"],
        choices=SPLIT_NAMES,
        metavar="SPLIT",
        help="splits whose sample-prediction figures are shown: train, val, test (default test)",
    )
    p.set_defaults(handler=report)


def report(args: argparse.Namespace) -> int:
    from busai.commands import command_line
    from busai.study_report import write_report

    written = write_report(
        args.inputs, args.out, audit=args.audit, splits=args.splits, title=args.title, command=command_line(args), sample_splits=tuple(args.sample_splits)
    )
    size = written["html"].stat().st_size / 1e6
    print(f"{written['markdown']}\n{written['html']} ({size:.1f} MB)")
    return 0
