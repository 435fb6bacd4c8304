"""``busai data synth | audit | split``: make a synthetic dataset, check a dataset, write splits."""

from __future__ import annotations

import argparse
import json
import shlex

from rich.console import Console
from rich.table import Table

from busai import CLASSES

_SHOWN = 10  # items listed per section in the human-readable audit; --json has them all


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="make synthetic data, audit a dataset, write train/val/test splits")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    synth = sub.add_parser("synth", help="write a synthetic BUSI-layout dataset (phantoms) for tests and demos")
    synth.add_argument("out_dir", metavar="OUT_DIR", help="new (or empty) folder to write into")
    synth.add_argument("--n", type=int, default=30, help="number of images, split ~45/30/25 benign/malignant/normal (default 30)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files (default 0)")
    synth.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=(128, 160), help="image height and width (default 128 160)")
    synth.set_defaults(handler=run_synth)

    from busai.data.audit import DEFAULT_NEAR_THRESHOLD
    from busai.data.splits import DUPLICATE_POLICIES

    audit = sub.add_parser("audit", help="count images, find duplicates, label conflicts and bad files")
    audit.add_argument("data_dir", metavar="DATA_DIR", help="folder holding benign/, malignant/, normal/")
    audit.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _near_threshold_option(audit, DEFAULT_NEAR_THRESHOLD)
    audit.set_defaults(handler=run_audit)

    split = sub.add_parser("split", help="write stratified train/val/test splits that keep duplicates together")
    split.add_argument("data_dir", metavar="DATA_DIR", help="folder holding benign/, malignant/, normal/")
    split.add_argument("--out", required=True, metavar="FILE", help="split file to write (JSON)")
    split.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    split.add_argument("--val", type=float, default=0.1, help="validation fraction (default 0.1)")
    split.add_argument("--test", type=float, default=0.1, help="test fraction (default 0.1)")
    split.add_argument("--folds", type=int, default=None, metavar="K", help="also write K cross-validation folds over train+val")
    split.add_argument(
        "--duplicates", choices=DUPLICATE_POLICIES, default="group",
        help="group: keep each duplicate group inside one split (default); exclude: leave grouped images out; "
        "ignore: split image by image as the paper did, a leaky control (leaked images are listed)",
    )
    _near_threshold_option(split, DEFAULT_NEAR_THRESHOLD)
    split.add_argument("--force", action="store_true", help="overwrite FILE even if it holds different splits")
    split.set_defaults(handler=run_split)


def _near_threshold_option(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--near-threshold",
        type=int,
        default=default,
        metavar="T",
        help=f"max perceptual-hash distance (of 64 bits) for near duplicates (default {default})",
    )


def run_synth(args: argparse.Namespace) -> int:
    from busai.data.synthetic import class_counts, write_synthetic_dataset

    out = write_synthetic_dataset(args.out_dir, n=args.n, seed=args.seed, size=tuple(args.size))
    counts = ", ".join(f"{n} {c}" for c, n in class_counts(args.n).items())
    Console().print(f"wrote {args.n} synthetic images ({counts}) to {out}")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from busai.data.audit import audit_dataset

    report = audit_dataset(args.data_dir, args.near_threshold, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    console = Console()
    console.print(f"Dataset {report.root}", highlight=False)
    table = Table()
    for column in ("class", "images"):
        table.add_column(column, justify="right" if column == "images" else "left")
    for name in CLASSES:
        table.add_row(name, str(report.counts[name]))
    table.add_row("total", str(report.images), style="bold")
    console.print(table)
    console.print(f"{report.masks} mask files")
    exact = report.exact_duplicate_groups
    console.print(
        f"{len(report.duplicate_groups)} duplicate groups ({sum(map(len, report.duplicate_groups))} images; "
        f"{len(exact)} exact, near = phash distance <= {report.near_threshold})"
    )
    _print_some(console, [", ".join(g) for g in exact], "exact duplicates")
    _print_some(console, [f"{', '.join(c['keys'])}  [{' / '.join(c['classes'])}]" for c in report.conflicts], "label conflicts")
    counts = report.problem_counts()
    console.print(f"{len(report.problems)} problems" + (f": {', '.join(f'{k} {n}' for k, n in counts.items())}" if counts else ""))
    _print_some(console, [p.message for p in report.problems], "problems")
    return 0


def _print_some(console: Console, lines: list[str], title: str) -> None:
    if not lines:
        return
    console.print(f"[bold]{title}[/bold] ({len(lines)}):", highlight=False)
    for line in lines[:_SHOWN]:
        console.print(f"  {line}", highlight=False, markup=False)
    if len(lines) > _SHOWN:
        console.print(f"  ... {len(lines) - _SHOWN} more (use --json for all)", highlight=False)


def run_split(args: argparse.Namespace) -> int:
    from busai.data.audit import audit_dataset
    from busai.data.discover import discover_records
    from busai.data.splits import make_splits, write_splits
    from busai.errors import DataError
    from busai.guards import check_file_names
    from busai.outputs import output_file

    output_file(args.out)  # a read-only location or a folder fails before the audit
    records = discover_records(args.data_dir)  # strict: refuses unpaired images before the slower audit
    check_file_names(records, args.data_dir)
    report = audit_dataset(args.data_dir, args.near_threshold, progress=True)
    unreadable = [p for p in report.problems if p.kind in {"unreadable_image", "unreadable_mask", "mask_size_mismatch"}]
    if unreadable:
        more = f" (and {len(unreadable) - 1} more; run `busai data audit {args.data_dir}`)" if len(unreadable) > 1 else ""
        raise DataError(unreadable[0].message + more)
    splits = make_splits(
        records,
        report.duplicate_groups,
        val=args.val,
        test=args.test,
        seed=args.seed,
        folds=args.folds,
        duplicates=args.duplicates,
    )
    splits = {"command": _command_line(args), **splits, "near_threshold": args.near_threshold}
    path = write_splits(args.out, splits, overwrite=args.force)
    _print_split_counts(splits, path)
    if report.problems:
        counts = ", ".join(f"{kind} {n}" for kind, n in report.problem_counts().items())
        Console().print(f"note: the audit found {len(report.problems)} problems ({counts}); see `busai data audit {args.data_dir}`", highlight=False)
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this file (options spelled out, so defaults are on record)."""
    parts = ["busai", "data", "split", args.data_dir, "--out", args.out, "--seed", str(args.seed), "--val", str(args.val), "--test", str(args.test)]
    if args.folds:
        parts += ["--folds", str(args.folds)]
    if args.duplicates != "group":
        parts += ["--duplicates", args.duplicates]
    parts += ["--near-threshold", str(args.near_threshold)]
    return shlex.join(parts)


def _duplicates_line(splits: dict) -> str:
    if splits["duplicates"] == "group":
        return f"{len(splits['groups'])} duplicate groups kept within one split"
    if splits["duplicates"] == "exclude":
        return f"{len(splits['excluded'])} duplicate-group images excluded"
    leaked = splits["leaked"]
    return (f"duplicates ignored (a leaky control): {len(leaked['val'])} val and {len(leaked['test'])} test images "
            "have a duplicate in train")


def _print_split_counts(splits: dict, path) -> None:
    table = Table(title=f"Splits written to {path}")
    table.add_column("split")
    for name in (*CLASSES, "total"):
        table.add_column(name, justify="right")
    names = ["train", "val", "test"] + (["excluded"] if splits["excluded"] else [])
    for name in names:
        counts = splits["counts"][name]
        table.add_row(name, *(str(counts[c]) for c in CLASSES), str(sum(counts.values())))
    console = Console()
    console.print(table)
    console.print(_duplicates_line(splits))
    if splits.get("folds"):
        console.print(f"{len(splits['folds'])} cross-validation folds over train+val; test is fixed")
