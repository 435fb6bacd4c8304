"""`busai tune`: Optuna studies over the paper's search spaces, and their best-parameter tables."""

from __future__ import annotations

import argparse
import json

from busai.commands import add_data_options, data_specs

# Mirrors busai.tune.PRUNERS / TRIAL_PATIENCE: not imported here so `busai --help` stays fast.
PRUNERS = ("median", "hyperband", "patience")
TRIAL_PATIENCE = 10


def register(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyper-parameters with Optuna (one trial = one training run)",
        description="Run or resume an Optuna study over the paper's search space; `busai tune table` prints the best "
        "hyper-parameters of finished studies like the paper's Tables 3 and 5.",
    )
    tsub = p.add_subparsers(dest="tune_command", metavar="TASK")
    tsub.required = True
    for task in ("seg", "cls"):
        s = tsub.add_parser(
            task,
            help=f"{'segmentation' if task == 'seg' else 'classification'} study",
            description="Re-running the same command resumes the study; trials in any state count towards --trials, "
            "except those whose worker was killed mid-trial (marked FAIL and run again).",
        )
        s.add_argument(
            "--data",
            required=True,
            action="append",
            metavar="[NAME=]PATH",
            help="dataset folder or CSV manifest; repeat as NAME=PATH to tune on several datasets of one split file",
        )
        add_data_options(s)
        s.add_argument(
            "--dataset-weight",
            dest="dataset_weights",
            action="append",
            default=None,
            metavar="NAME=W",
            help="relative share of training draws for a dataset (as for `busai train`)",
        )
        s.add_argument("--splits", required=True, help="splits JSON from `busai data split`")
        s.add_argument("--out", required=True, help="study folder: study.db, summary, best config, plots, trial runs")
        s.add_argument("--trials", type=int, required=True, help="total trials the study should hold")
        s.add_argument("--timeout", type=float, metavar="MIN", help="stop starting new trials after MIN minutes")
        s.add_argument("--storage", help="Optuna storage URL shared by workers, e.g. postgresql+psycopg2://user:pw@host/db (default: sqlite:///OUT/study.db)")
        s.add_argument("--study", help="study name (default: the --out folder's name)")
        s.add_argument(
            "--space",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="narrow the space: lr=1e-4:1e-3, encoder=resnet18,efficientnet-lite0, model=unet (one value fixes it)",
        )
        s.add_argument("--space-file", help="JSON object of the same overrides, applied before --space")
        s.add_argument(
            "--pruner",
            choices=PRUNERS,
            default="median",
            help="median / hyperband: prune against other trials; patience: only the paper's early stop after 10 flat epochs",
        )
        s.add_argument(
            "--enqueue-paper",
            action="store_true",
            help="make the paper's tuned settings for the (fixed) model the first trial, to compare under the same budget",
        )
        s.add_argument("--image-size", type=int, help="CPU budget: fix the image size (overrides the paper's 256/288/320)")
        s.add_argument("--max-epochs", type=int, help="CPU budget: cap the epochs of every trial")
        s.add_argument("--trial-minutes", type=float, help="CPU budget: wall-clock cap per trial")
        s.add_argument("--trial-patience", type=int, default=TRIAL_PATIENCE, help=f"early stopping inside a trial (paper: {TRIAL_PATIENCE})")
        s.add_argument("--config", help="base config JSON for everything the space does not set (loss, augmentation, ...)")
        s.add_argument("--weights", help="encoder / backbone weights (default: the config's, imagenet)")
        s.add_argument("--device", help="auto, cpu or cuda")
        s.add_argument("--seed", type=int, default=0, help="sampler seed; give each worker on a shared storage its own")
        s.add_argument("--quiet", action="store_true", help="no per-trial lines")
        s.add_argument("--json", action="store_true", help="print the study summary as JSON")
        s.set_defaults(handler=run, task=task)
    t = tsub.add_parser("table", help="Markdown table of the best hyper-parameters of study folders")
    t.add_argument("studies", nargs="+", help="study folders (each with summary.json)")
    t.set_defaults(handler=table)


def run(args: argparse.Namespace) -> int:
    from busai.tune import build_space, describe_space, run_study  # first: names the 'tune' extra if optuna is missing

    import optuna

    from busai.commands import command_line
    from busai.config import TrainConfig

    space = build_space(args.task, space_file=args.space_file, space_flags=args.space, image_size=args.image_size, max_epochs=args.max_epochs)
    base = TrainConfig.from_file(args.config) if args.config else TrainConfig(task=args.task)
    for key in ("weights", "device"):
        if getattr(args, key) is not None:
            setattr(base, key, getattr(args, key))
    if args.dataset_weights:
        from busai.commands.train import _parse_weights

        base.dataset_weights = _parse_weights(args.dataset_weights)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial below instead of Optuna's log
    chatty = not (args.quiet or args.json)
    if chatty:
        print(f"study {args.study or args.out} ({args.task}), {args.trials} trials, pruner {args.pruner}; search space:")
        for line in describe_space(space):
            print("  " + line)
    summary = run_study(
        args.task,
        data_specs(args),
        args.splits,
        out_dir=args.out,
        trials=args.trials,
        timeout_minutes=args.timeout,
        storage=args.storage,
        study_name=args.study,
        space=space,
        base=base,
        trial_minutes=args.trial_minutes,
        trial_patience=args.trial_patience,
        pruner=args.pruner,
        enqueue_paper=args.enqueue_paper,
        seed=args.seed,
        command=command_line(args),
        on_trial=_print_trial if chatty else None,
    ).to_dict()
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        best = summary["best"]
        counts = ", ".join(f"{v} {k.lower()}" for k, v in summary["trials"].items() if k != "total")
        print(
            f"{args.out}: {summary['trials']['total']} trials ({counts}); "
            + (f"best #{best['number']} {best['value']:.4f} {best['params']}" if best else "no complete trial")
        )
        paper = summary["paper_trial"]
        if paper and paper["state"] == "COMPLETE":
            print(f"paper's settings ({paper['row']}): trial #{paper['number']} {paper['value']:.4f}; tuned beats them: {paper['tuned_beats_paper']}")
        if best:
            print(f"retrain: {summary['retrain']}")
    return 0


def _print_trial(r: dict) -> None:
    value = "" if r["value"] is None else f" {r['value']:.4f}"
    seconds = "" if r["seconds"] is None else f" {r['seconds']:.0f} s"
    epochs = "" if r["epochs_run"] is None else f" {r['epochs_run']} ep"
    best = "" if r["best_number"] is None else f" (best #{r['best_number']} {r['best_value']:.4f})"
    reason = f" {r['fail_reason']}" if r["fail_reason"] else ""
    print(f"trial {r['number']} {r['state'].lower()}{value}{epochs}{seconds}{best} {r['params']}{reason}", flush=True)


def table(args: argparse.Namespace) -> int:
    from busai.tune import best_params_table

    print(best_params_table(args.studies))
    return 0
