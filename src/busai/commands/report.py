"""`busai report`: a report over run folders, results folders and tuning studies (the study adds its paper's numbers: `python -m study.report`)."""

from __future__ import annotations

import argparse

from busai import SPLIT_NAMES


HELP = "write report.md and a self-contained report.html from runs, results folders and tuning studies"
DESCRIPTION = (
    "Dataset audit, split tables, tuned hyper-parameters, segmentation and classification tables with CIs, "
    "confusion matrices, calibration, training curves, sample predictions, weight source and training cost per run. "
    "Nothing is recomputed: numbers are read from the inputs."
)


def register(sub) -> None:
    add_arguments(sub.add_parser("report", help=HELP, description=DESCRIPTION))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `busai report`, shared with the study's `python -m study.report`."""
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


def report(args: argparse.Namespace, reference=None) -> int:
    """``reference``: a :class:`busai.report.Reference` whose numbers are printed beside ours (the study's paper)."""
    from busai.commands import command_line
    from busai.report_page import write_report

    written = write_report(
        args.inputs,
        args.out,
        audit=args.audit,
        splits=args.splits,
        title=args.title,
        command=getattr(args, "recorded_command", None) or command_line(args),  # the study records its own
        sample_splits=tuple(args.sample_splits),
        reference=reference,
    )
    size = written["html"].stat().st_size / 1e6
    print(f"{written['markdown']}\n{written['html']} ({size:.1f} MB)")
    return 0
