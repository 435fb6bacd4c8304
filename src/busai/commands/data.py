"""``busai data synth | audit | split``: make a synthetic dataset, check a dataset, write splits."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from busai.commands import add_data_options, data_specs

_SHOWN = 10  # items listed per section in the human-readable audit; --json has them all


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="make synthetic data, audit a dataset, write train/val/test splits")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    from busai.config import SPLIT_TEST, SPLIT_VAL, SYNTH_IMAGES, SYNTH_SIZE
    from busai.data.synthetic import LAYOUTS

    synth = sub.add_parser("synth", help="write a synthetic BUSI-layout dataset (phantoms) for tests and demos")
    synth.add_argument("out_dir", metavar="OUT_DIR", help="new (or empty) folder to write into")
    synth.add_argument("--n", type=int, default=SYNTH_IMAGES, help=f"number of images, split ~45/30/25 benign/malignant/normal (default {SYNTH_IMAGES})")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files (default 0)")
    synth.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=SYNTH_SIZE, help="image height and width (default {} {})".format(*SYNTH_SIZE))
    synth.add_argument(
        "--layout",
        default="busi",
        choices=LAYOUTS,
        help="folder layout to write (default busi); every layout `busai data audit` reads, to see or test one",
    )
    synth.set_defaults(handler=run_synth)

    from busai.data.audit import DEFAULT_NEAR_THRESHOLD
    from busai.data.splits import DUPLICATE_POLICIES

    from busai.data.sources import FORMATS

    layouts = ", ".join(FORMATS)
    audit = sub.add_parser("audit", help="count images and patients, find duplicates, label conflicts and bad files")
    audit.add_argument("data_dir", metavar="DATA", help=f"dataset folder or CSV manifest, optionally NAME=PATH (layouts: {layouts}; detected)")
    add_data_options(audit)
    audit.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    _near_threshold_option(audit, DEFAULT_NEAR_THRESHOLD)
    audit.set_defaults(handler=run_audit)

    split = sub.add_parser("split", help="write stratified train/val/test splits that keep duplicates and patients together")
    split.add_argument("data_dir", metavar="DATA", nargs="?", default=None, help="one dataset folder or CSV manifest (or use --data)")
    split.add_argument(
        "--data",
        dest="data",
        action="append",
        default=None,
        metavar="NAME=PATH",
        help="a dataset, repeatable: several datasets share one split file, each split on its own (keys carry NAME:)",
    )
    add_data_options(split)
    split.add_argument(
        "--exclude-problems",
        action="store_true",
        help="leave out images the audit finds unusable (unreadable, mask of another size, implausible stated pixel spacing, "
        "name not UTF-8) and list them under "
        "'excluded' with the reason, instead of stopping at the first",
    )
    split.add_argument("--out", required=True, metavar="FILE", help="split file to write (JSON)")
    split.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    split.add_argument("--val", type=float, default=SPLIT_VAL, help=f"validation fraction (default {SPLIT_VAL})")
    split.add_argument("--test", type=float, default=SPLIT_TEST, help=f"test fraction (default {SPLIT_TEST})")
    split.add_argument("--folds", type=int, default=None, metavar="K", help="also write K cross-validation folds over train+val")
    split.add_argument(
        "--duplicates",
        choices=DUPLICATE_POLICIES,
        default="group",
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
    import tempfile

    from busai.data.synthetic import class_counts, write_layout, write_synthetic_dataset

    if args.layout == "busi":
        out = write_synthetic_dataset(args.out_dir, n=args.n, seed=args.seed, size=tuple(args.size))
    else:
        with tempfile.TemporaryDirectory(prefix="busai-synth-") as tmp:
            busi = write_synthetic_dataset(Path(tmp) / "busi", n=args.n, seed=args.seed, size=tuple(args.size))
            out = write_layout(busi, args.out_dir, args.layout)
    counts = ", ".join(f"{n} {c}" for c, n in class_counts(args.n).items())
    Console().print(f"wrote {args.n} synthetic images ({counts}) to {out}")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    from busai.data.audit import audit_dataset

    spec = data_specs(args, [args.data_dir])[0]
    report = audit_dataset(spec, args.near_threshold, progress=not args.json)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    console = Console()
    console.print(f"Dataset {report.root} (layout: {report.format})", highlight=False)
    table = Table()
    for column in ("class", "images"):
        table.add_column(column, justify="right" if column == "images" else "left")
    for name, count in report.counts.items():
        table.add_row(name, str(count))
    if report.unlabelled:
        table.add_row("unlabelled", str(report.unlabelled))
    table.add_row("total", str(report.images), style="bold")
    console.print(table)
    console.print(f"{report.masks} mask files")
    groups = report.group_summary()
    if groups["groups"]:
        console.print(
            f"{groups['groups']} patients (groups): {groups['images_min']} to {groups['images_max']} images each "
            f"(median {groups['images_median']}); {groups['groups_with_lesion']} with a lesion scan",
            highlight=False,
        )
    else:
        console.print("patients unknown (the layout names no groups): duplicate groups alone keep scans together")
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
    from busai.data.audit import audit_dataset, duplicate_groups_across, unusable_images
    from busai.data.sources import read_records
    from busai.data.splits import _class_counts, make_splits, write_splits
    from busai.errors import ConfigError, DataError
    from busai.outputs import output_file, printable

    if (args.data_dir is None) == (args.data is None):
        raise ConfigError("give the dataset either as DATA or with --data NAME=PATH (repeatable), not both or neither")
    specs = data_specs(args, args.data or [args.data_dir])
    output_file(args.out)  # a read-only location or a folder fails before the audit
    records = read_records(specs)  # strict: refuses unpaired images before the slower audit
    reports = [audit_dataset(spec, args.near_threshold, progress=True) for spec in specs]
    for spec, report in zip(specs, reports):
        Console().print(f"{spec}: layout {report.format}", highlight=False)
    unusable = unusable_images([p for report in reports for p in report.problems], records)
    if unusable and not args.exclude_problems:
        first = next(iter(unusable.values()))
        where = " ".join(f"busai data audit {s.path}" for s in specs)
        raise DataError(
            f"{first} (and {len(unusable) - 1} more; `{where}` lists them; or pass --exclude-problems to leave them out)"
            if len(unusable) > 1
            else first + " (or pass --exclude-problems to leave it out)"
        )
    usable = [r for r in records if r.key not in unusable]
    groups = duplicate_groups_across(reports)
    splits = make_splits(
        usable,
        groups,
        val=args.val,
        test=args.test,
        seed=args.seed,
        folds=args.folds,
        duplicates=args.duplicates,
        formats={spec.name: report.format for spec, report in zip(specs, reports)},
    )
    # Fingerprints describe each dataset folder as it is, excluded images included.
    from busai.data.splits import dataset_fingerprint

    if splits.get("datasets"):
        for name, entry in splits["datasets"].items():
            entry["fingerprint"] = dataset_fingerprint([r for r in records if r.dataset == name])
    else:
        splits["fingerprint"] = dataset_fingerprint(records)
    if unusable:
        label_of = {r.key: r.label for r in records}
        splits["excluded"] = splits["excluded"] + [k for k in (r.key for r in records) if k in unusable]
        splits["counts"]["excluded"] = _class_counts(splits["excluded"], label_of)
        for name, entry in (splits.get("datasets") or {}).items():
            entry["counts"]["excluded"] = _class_counts([k for k in splits["excluded"] if k.startswith(f"{name}:")], label_of)
        # A name that is not UTF-8 is listed with its odd bytes spelled \xff: the file is UTF-8 JSON.
        splits["excluded"] = [printable(k) for k in splits["excluded"]]
        splits["exclusions"] = {printable(k): why for k, why in unusable.items()}
    splits = {"command": _command_line(args), **splits, "near_threshold": args.near_threshold}
    path = write_splits(args.out, splits, overwrite=args.force)
    _print_split_counts(splits, path)
    problems = sum(len(r.problems) for r in reports)
    if problems:
        Console().print(f"note: the audit found {problems} problems; see `busai data audit` on each dataset", highlight=False)
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this file (options spelled out, so defaults are on record)."""
    data = [args.data_dir] if args.data_dir else [x for d in args.data for x in ("--data", d)]
    parts = ["busai", "data", "split", *data]
    parts += [x for f in args.formats or [] for x in ("--format", f)]
    parts += [x for f in args.columns or [] for x in ("--columns", f)]
    parts += [x for f in args.mask_patterns or [] for x in ("--mask-pattern", f)]
    if args.exclude_problems:
        parts.append("--exclude-problems")
    parts += ["--out", args.out, "--seed", str(args.seed), "--val", str(args.val), "--test", str(args.test)]
    if args.folds:
        parts += ["--folds", str(args.folds)]
    if args.duplicates != "group":
        parts += ["--duplicates", args.duplicates]
    parts += ["--near-threshold", str(args.near_threshold)]
    return shlex.join(parts)


def _duplicates_line(splits: dict) -> str:
    if splits["duplicates"] == "group":
        # The groups are duplicate images merged with each patient's scans where the layout names patients.
        patients = any((entry or {}).get("patients") for entry in (splits.get("datasets") or {}).values())
        what = "groups of duplicate images and of one patient's scans" if patients else "duplicate groups"
        return f"{len(splits['groups'])} {what} kept within one split"
    if splits["duplicates"] == "exclude":
        return f"{len(splits['excluded'])} duplicate-group images excluded"
    leaked = splits["leaked"]
    return f"duplicates ignored (a leaky control): {len(leaked['val'])} val and {len(leaked['test'])} test images have a duplicate in train"


def _print_split_counts(splits: dict, path) -> None:
    console = Console()
    datasets = splits.get("datasets")
    table = Table(title=f"Splits written to {path}")
    if datasets:
        table.add_column("dataset")
    table.add_column("split")
    classes = list(splits["counts"]["train"])  # the data's labels (busai.labels.count_names)
    for name in (*classes, "total"):
        table.add_column(name, justify="right")
    if datasets:
        table.add_column("patients", justify="right")
    names = ["train", "val", "test"] + (["excluded"] if splits["excluded"] else [])
    for dataset, entry in (datasets or {"": {"counts": splits["counts"]}}).items():
        for name in names:
            counts = entry["counts"][name]
            row = [str(counts.get(c, 0)) for c in classes] + [str(sum(counts.values()))]
            if datasets:
                patients = entry.get("patients", {}).get(name)
                row = [dataset, name, *row, "" if not patients else str(patients)]
            else:
                row = [name, *row]
            table.add_row(*row)
    console.print(table)
    console.print(_duplicates_line(splits))
    if splits.get("exclusions"):
        console.print(f"{len(splits['exclusions'])} unusable images excluded (reasons under 'exclusions' in the file)")
    if splits.get("cross_dataset_groups"):
        console.print(f"{len(splits['cross_dataset_groups'])} duplicate groups span two datasets: kept in train")
    if splits.get("folds"):
        console.print(f"{len(splits['folds'])} cross-validation folds over train+val; test is fixed")
