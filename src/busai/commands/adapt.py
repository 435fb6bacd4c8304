"""`busai adapt`: adapt a segmentation model to a new site's scans, without labels or with a few."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    from busai.config import (
        ADAPT_BATCH_SIZE,
        ADAPT_EPOCHS,
        ADAPT_FREEZE_ENCODER,
        ADAPT_LR,
        ADAPT_PATIENCE,
        DEVICES,
        N_BOOT,
        ADAPT_HOLDOUT as HOLDOUT,
        ADAPT_MIN_LABELLED as MIN_LABELLED,
        ADAPT_PSEUDO_AGREEMENT,
        ADAPT_PSEUDO_BAND,
        ADAPT_PSEUDO_CONFIDENCE,
    )

    p = sub.add_parser(
        "adapt",
        help="adapt a segmentation model to your own scanner's scans (no labels needed; a few labels help)",
        description="Re-estimate the model's normalisation statistics on the site's scans and, with labelled scans, fine-tune on them "
        "(frozen early encoder stages, early stop on a grouped hold-out of them). The site's held-out scans are never adapted on: they "
        "score the model before and after (OUT/adapt.md). OUT is a run folder for predict, evaluate and serve. See docs/own-scanner.md.",
    )
    p.add_argument("model", metavar="MODEL", help="segmentation model: run folder, release folder or 'release'")
    p.add_argument(
        "--data",
        required=True,
        metavar="[NAME=]DIR",
        help="the site's scans: a dataset layout busai reads (rows with masks count as labelled) or any folder of images (unlabelled)",
    )
    p.add_argument("--format", dest="data_format", default=None, metavar="FMT", help="force the layout of --data (see docs/datasets.md)")
    p.add_argument("--out", required=True, metavar="RUN", help="new folder for the adapted model and its report")
    p.add_argument(
        "--splits",
        default=None,
        metavar="FILE",
        help="the site's split file: adapt on its train images, report on its test images, leave val alone (default: adapt holds out labelled scans itself)",
    )
    p.add_argument(
        "--labelled",
        type=int,
        default=None,
        metavar="N",
        help=f"fine-tune on N labelled scans (at least {MIN_LABELLED}); 0: statistics only (default: every labelled scan outside the hold-out, if {MIN_LABELLED} or more)",
    )
    p.add_argument("--holdout", type=float, default=HOLDOUT, help=f"share of the labelled scans held out for the report, by patient (default {HOLDOUT})")
    p.add_argument(
        "--freeze-encoder",
        type=int,
        default=ADAPT_FREEZE_ENCODER,
        metavar="K",
        help=f"encoder stages (from the input) kept fixed while fine-tuning (default {ADAPT_FREEZE_ENCODER}; 0: none)",
    )
    p.add_argument(
        "--pseudo-label",
        action="store_true",
        help="without labels: after the statistics, self-train on the scans whose prediction is confident and agrees with its mirror image's; "
        "kept only if it does not lower the held-out Dice (with no held-out labels: kept, its agreement reported)",
    )
    p.add_argument(
        "--pseudo-agreement",
        type=float,
        default=ADAPT_PSEUDO_AGREEMENT,
        metavar="D",
        help=f"--pseudo-label: least Dice between a scan's mask and its mirror image's (default {ADAPT_PSEUDO_AGREEMENT})",
    )
    p.add_argument(
        "--pseudo-confidence",
        type=float,
        default=ADAPT_PSEUDO_CONFIDENCE,
        metavar="C",
        help=f"--pseudo-label: least mean |2p - 1| over the predicted lesion (default {ADAPT_PSEUDO_CONFIDENCE})",
    )
    p.add_argument(
        "--pseudo-band",
        type=float,
        default=ADAPT_PSEUDO_BAND,
        metavar="W",
        help=f"--pseudo-label: pixels with probability within W of 0.5 are left out of the loss (default {ADAPT_PSEUDO_BAND})",
    )
    p.add_argument("--epochs", type=int, default=ADAPT_EPOCHS, help=f"most fine-tuning epochs (default {ADAPT_EPOCHS})")
    p.add_argument(
        "--patience", type=int, default=ADAPT_PATIENCE, help=f"stop after this many epochs without a better early-stop score (default {ADAPT_PATIENCE})"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        metavar="M",
        help="wall-clock budget of the fine-tuning or self-training: it stops after the epoch that crosses it, keeping its best epoch (default: none)",
    )
    p.add_argument("--lr", type=float, default=ADAPT_LR, help=f"fine-tuning learning rate (default {ADAPT_LR:g})")
    p.add_argument("--batch-size", type=int, default=ADAPT_BATCH_SIZE, help=f"fine-tuning batch size (default {ADAPT_BATCH_SIZE})")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out, the labelled subset and training (default 0)")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help=f"bootstrap resamples for the 95%% CIs (default {N_BOOT})")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto (default): the GPU when one is visible, else the CPU")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the report (adapt.json) as one JSON object")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from busai.adaptation import ADAPT_MD, adapt
    from busai.commands import command_line

    report = adapt(
        args.model,
        args.data,
        args.out,
        splits=args.splits,
        labelled=args.labelled,
        holdout=args.holdout,
        freeze_encoder=args.freeze_encoder,
        epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        n_boot=args.n_boot,
        data_format=args.data_format,
        quiet=args.quiet or args.json,
        command=command_line(args),
        pseudo_label=args.pseudo_label,
        pseudo_agreement=args.pseudo_agreement,
        pseudo_confidence=args.pseudo_confidence,
        pseudo_band=args.pseudo_band,
        max_minutes=args.max_minutes,
    )
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k not in ("per_image", "lists")}, default=str))
        return 0
    scores = report.get("scores") or {}
    before, after = scores.get("before"), scores.get("after")
    if before and after:
        b, a = before["lesion_dice"]["value"], after["lesion_dice"]["value"]
        missed = f"lesions missed {before['detection']['missed_lesions']} -> {after['detection']['missed_lesions']} of {after['detection']['lesion_images']}"
        print(f"held-out Dice over lesion scans {b:.3f} -> {a:.3f}, {missed}" if b is not None and a is not None else missed)
    else:
        print("no held-out labelled scans: nothing scored (label a few of the site's scans to see the change)")
    if report.get("pseudo_label"):
        print(f"pseudo-labels: {report['pseudo_label']['used']} of {report['pseudo_label']['scans']} scans used; {report['pseudo_label']['decision']}")
    print(f"{report['mode']} adaptation written to {args.out} (report: {args.out}/{ADAPT_MD})")
    return 0
