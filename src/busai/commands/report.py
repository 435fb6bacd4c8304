"""`busai report`: result files from evaluated run folders, and the README tables from result files."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("report", help="collect results from run folders; render paper-shaped tables")
    rsub = p.add_subparsers(dest="report_command", metavar="ACTION")
    rsub.required = True
    c = rsub.add_parser("collect", help="write results/<task>/<run>.json from evaluated run folders")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--out", required=True, help="results folder, e.g. results/segmentation")
    c.set_defaults(handler=collect)
    t = rsub.add_parser("tables", help="print (or write into README) the segmentation, classification, speed and tuning tables; draw the classifier comparison chart")
    t.add_argument("--results", default="results", help="folder holding segmentation/, classification/ and tuning/")
    t.add_argument("--readme", help="README to update between <!-- seg-table|cls-table|speed-table|leak-table|tune-table:start/end --> markers")
    t.set_defaults(handler=tables)


def collect(args: argparse.Namespace) -> int:
    from busai.report import write_results

    for path in write_results(args.run_dirs, args.out):
        print(path)
    return 0


def tables(args: argparse.Namespace) -> int:
    from pathlib import Path

    from busai.figures import model_comparison
    from busai.report import (
        classification_table, comparison_rows, leakage_table, load_results, missed_table, segmentation_table, speed_table, update_readme,
    )

    root = Path(args.results)
    classification = load_results(root / "classification")
    if classification:  # the paper's Figure 11: every classifier on train / val / test
        print(model_comparison(comparison_rows(classification), root / "classification" / "figures" / "model_comparison.png"))
    rendered = {
        "seg-table": segmentation_table(load_results(root / "segmentation")),
        "cls-table": classification_table(classification),
        "speed-table": speed_table(root),
        "leak-table": leakage_table(root),
        "missed-table": missed_table(root),
    }
    studies = sorted(p.parent for p in (root / "tuning").glob("*/summary.json"))
    if studies:  # Optuna is imported only when there are studies to show
        from busai.tune import best_params_table

        rendered["tune-table"] = best_params_table(studies)
    for marker, table in rendered.items():
        if not table:  # an optional table whose results are absent (the leak benchmark): its markers are not required
            continue
        if args.readme:
            update_readme(args.readme, marker, table)
        elif table.count("\n") > 1:  # header rows only: nothing collected for this table
            print(table + "\n")
    return 0
