"""``busai models``: what can be built, at which default size, and whether ImageNet weights are here."""

from __future__ import annotations

import argparse
import json

TASK_CHOICES = ("seg", "cls", "segmentation", "classification")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list models and whether their ImageNet weights are available offline",
        description="List segmentation models (decoder x encoder) and classifiers, their default image size, "
        "and where their ImageNet weights would be loaded from on this machine.",
    )
    parser.add_argument("--task", choices=TASK_CHOICES, help="only this task")
    parser.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.models.registry import UNSUPPORTED, list_models, resolve_task

    rows = list_models(args.task)
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
        return 0
    _print_table(rows)
    if args.task is None or resolve_task(args.task) == "segmentation":
        for (decoder, encoder), reason in UNSUPPORTED.items():
            print(f"not buildable: {decoder} + {encoder} ({reason})")
    if any(row["imagenet"] == "no" for row in rows):
        print(
            "missing ImageNet weights start from random weights (with a warning): copy the torchvision files "
            "into $TORCH_HOME/hub/checkpoints/ or set BUSAI_WEIGHTS_DIR to a folder holding them"
        )
    return 0


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="busai models")
    for column in ("task", "model", "encoder", "size", "ImageNet weights here"):
        table.add_column(column, overflow="fold")
    short_task = {"segmentation": "seg", "classification": "cls"}  # keeps the table inside 80 columns
    for row in rows:
        source = (row["imagenet_source"] or "").removeprefix("imagenet ").strip("()")
        available = f"[green]yes[/green] {source}" if row["imagenet"] == "yes" else "[red]no[/red]"
        table.add_row(short_task.get(row["task"], row["task"]), row["name"], row["encoder"] or "", str(row["image_size"]), available)
    Console().print(table)
