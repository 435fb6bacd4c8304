"""`busai evaluate`: score any model (run folder, release, release folder, .onnx) on any labelled data."""

from __future__ import annotations

import argparse
import json

from busai import SPLIT_NAMES
from busai.commands import add_data_options
from busai.config import DEVICES, N_BOOT, PRECISIONS


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model on a split or on all of a dataset, with bootstrap 95%% CIs",
        description="Score a model on labelled data. MODEL is a run folder, 'release' (both packaged models), a release folder "
        "or an exported .onnx file. A dataset the model never trained on can be scored whole with --all (external validation); "
        "images the model trained on are refused.",
    )
    p.add_argument("model", metavar="MODEL", help="run folder, 'release', release folder or .onnx file")
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="dataset folder or CSV manifest; repeat as NAME=PATH for several (each scored on its own, and pooled)",
    )
    add_data_options(p)
    p.add_argument("--splits", default=None, metavar="FILE", help="split JSON (from `busai data split`)")
    p.add_argument("--split", default=["test"], choices=SPLIT_NAMES, nargs="+", help="one or more splits of --splits (default: test)")
    p.add_argument("--all", dest="all_images", action="store_true", help="score every image of the data instead of a split")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where metrics.json and figures go (default: the run folder; required for release, release folders and .onnx)",
    )
    p.add_argument("--n-boot", type=int, default=N_BOOT, help=f"bootstrap resamples for the 95%% CIs (default {N_BOOT})")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the sample and confusion-matrix figures")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation, as `busai predict --tta`; stored as <key>_tta")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): the GPU when one is visible, else the CPU")
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto (default): what busai predict computes on this machine (bf16 where the CPU has it natively); fp32: the reference any machine reproduces",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none either when stderr is not a terminal)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.commands import command_line, data_specs
    from busai.evaluation import evaluate_model

    results = evaluate_model(
        args.model,
        data_specs(args),
        splits_file=args.splits,
        split_names=args.split,
        all_images=args.all_images,
        out=args.out,
        n_boot=args.n_boot,
        figures=args.figures,
        tta=args.tta,
        command=command_line(args),
        device=args.device,
        progress=not args.quiet,
        precision=args.precision,
    )
    if args.json:
        flat = {f"{task}:{key}" if len(results) > 1 else key: r for task, by_key in results.items() for key, r in by_key.items()}
        print(json.dumps(next(iter(flat.values())) if len(flat) == 1 else flat, default=str))
    else:
        for by_key in results.values():
            for key, result in by_key.items():
                print_metrics(result, key)
    return 0


def print_metrics(result: dict, key: str | None = None) -> None:
    """A short human summary of one evaluate result, on stdout."""
    from rich.console import Console
    from rich.table import Table

    from busai import CLASSES
    from busai.report import SEG_METRICS, _short_source, fmt_ci, fmt_value

    split = (key or result["split"]) + (" + flip TTA" if result.get("tta") and not (key or "").endswith("_tta") else "")
    table = Table(
        title=f"{result['task']} · {split} · {result['images']} images · weights: {_short_source(result.get('weight_source'))}",
        caption=f"CI: {result.get('ci')}",
    )
    table.add_column("metric")
    table.add_column("value (95% CI)")
    if result["task"] == "segmentation":
        for name in SEG_METRICS:
            for kind in ("mean", "pooled"):
                table.add_row(f"{name} ({kind})", fmt_ci(result[name][kind]))
        if result.get("lesion_dice"):
            table.add_row("dice over lesion images", fmt_ci(result["lesion_dice"]))
        d = result["detection"]
        table.add_row("lesion images missed", f"{d['missed_lesions']} of {d['lesion_images']}")
        table.add_row("lesion-free images flagged", f"{d['false_alarms']} of {d['lesion_free_images']}")
    else:
        for name in ("accuracy", "macro_f1", "macro_auc", "malignant_vs_benign_auc", "ece"):
            value = result.get(name)
            if value is not None:
                table.add_row(name, fmt_ci(value) if isinstance(value, dict) else f"{value:.3f}")
        for c in result.get("classes") or CLASSES:
            pc = result["per_class"][c]
            scores = f"{fmt_value(pc['precision'])} / {fmt_value(pc['recall'])} / {fmt_value(pc['f1'])}"
            table.add_row(f"{c} P/R/F1", scores if pc["support"] else f"{scores} (no {c} images; predicted for {pc.get('predicted', '?')})")
        if result.get("note"):
            table.add_row("note", result["note"])
    Console().print(table)
