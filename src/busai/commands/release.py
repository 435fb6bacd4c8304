"""`busai release`: package the best of several runs (by validation score) as the built-in model."""

from __future__ import annotations

import argparse

from busai.config import MODEL_TASKS


def register(sub) -> None:
    p = sub.add_parser(
        "release",
        help="ship the run with the best validation score as the package's built-in model",
        description="Among the given evaluated run folders, pick the one with the best validation Dice "
        "(segmentation) or macro-F1 (classification) and write it, as fp16, into busai/release/<task>/.",
    )
    p.add_argument("run_dirs", nargs="+", help="evaluated run folders of one task")
    p.add_argument("--task", required=True, choices=MODEL_TASKS, help="which packaged model the best run replaces: seg or cls")
    p.add_argument("--dest", help="release root (default: inside the installed package)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.release import make_release, pick_by_validation

    from busai.models.registry import resolve_task

    best, scores = pick_by_validation(args.run_dirs, resolve_task(args.task))
    for run_dir, score in sorted(scores.items(), key=lambda kv: -kv[1]):
        print(f"{score:.4f}  {run_dir}{'  <- released' if run_dir == str(best) else ''}")
    print(make_release(best, args.task, root=args.dest))
    return 0
