"""`busai train`: train a segmentation or classification model into a run folder."""

from __future__ import annotations

import argparse
import json

from busai.commands import add_data_options, data_specs
from busai.config import AUGMENTATIONS, COLORS, DEVICES, SCHEDULERS, TRACKERS, TRAIN_TASKS, VIEWS, TrainConfig

# CLI flag -> config key; every flag defaults to None so only what the user typed overrides --config.
_FLAGS = {
    "model": str,
    "encoder": str,
    "weights": str,
    "image_size": int,
    "optimizer": str,
    "lr": float,
    "weight_decay": float,
    "batch_size": int,
    "epochs": int,
    "patience": int,
    "loss": str,
    "focal_gamma": float,
    "class_loss_weight": float,
    "scheduler": str,
    "plateau_patience": int,
    "precision": str,
    "device": str,
    "seed": int,
    "max_minutes": float,
    "splits": str,
    "fold": int,
    "num_workers": int,
    "classes": str,
    "select": str,
    "ema": float,
}


def register(sub) -> None:
    from busai.config import OPTIMIZERS, PRECISIONS, SEGMENTATION_LOSSES

    p = sub.add_parser(
        "train",
        help="train a model into a run folder (or --resume one)",
        description="Train a segmentation (seg) or classification (cls) model, or one multitask (mt) network that does both "
        "(a segmentation model whose encoder also feeds a class head). Defaults follow the paper; "
        "--config takes a JSON or YAML config (e.g. the best one from `busai tune`) that flags override. "
        "Options left out keep the config's value, else the default shown.",
    )
    p.add_argument("task", nargs="?", choices=TRAIN_TASKS, help="seg, cls or mt (omit with --resume or --config)")
    p.add_argument("--out", help="new run folder to write")
    p.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint (only --epochs, --max-minutes, --patience may change)"
    )
    p.add_argument("--config", help="JSON or YAML config file; flags given here override it")

    model = p.add_argument_group("model")
    model.add_argument(
        "--model", help="seg, mt: decoder unet, unetplusplus or deeplabv3 (default unet); cls: classifier name (default resnet18). `busai models` lists them"
    )
    model.add_argument("--encoder", help="seg, mt: encoder, e.g. resnet18 (default), efficientnet-lite0, mobilenet_v2, vgg16")
    model.add_argument(
        "--weights",
        help="imagenet (default; loaded from local files, else random with a warning), none, release, a release or run folder, or a weights file; "
        "a folder (release included) also sets --model, --encoder, --image-size and --color to its own",
    )
    model.add_argument("--image-size", dest="image_size", type=int, metavar="PX", help="input size (default: the model's, 256 seg, 224 cls, 299 InceptionV3)")
    model.add_argument(
        "--color",
        choices=COLORS,
        default=None,
        help="gray: the model sees every scan as grey (a tinted grey map or overlays do not shift it); default rgb",
    )
    model.add_argument(
        "--view",
        choices=VIEWS,
        default=None,
        help="cls: lesion trains on the lesion with its context, cut from each image's mask (classes benign, malignant); "
        "predict then cuts it around the segmenter's mask. Default scan (the whole scan)",
    )
    model.add_argument(
        "--crop-margin",
        dest="crop_margin",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="--view lesion: context on each side, as a share of the lesion's height / width, drawn per image from [LOW, HIGH] "
        "(its middle at validation and prediction; default 0.15 0.6)",
    )
    model.add_argument(
        "--sync-bn", dest="sync_bn", action="store_true", default=None, help="with --gpus / torchrun on GPUs: BatchNorm statistics over the global batch"
    )

    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help="dataset folder or CSV manifest; repeat as NAME=PATH to train on several datasets of one split file",
    )
    add_data_options(data)
    data.add_argument("--splits", metavar="FILE", help="split file from `busai data split` (required)")
    data.add_argument(
        "--classes",
        metavar="LIST|MAP",
        help="cls, mt: the classes to learn, e.g. benign,malignant (images of other classes are left out) or a mapping of data label "
        "to class, e.g. 'normal=benign,benign=benign,malignant=malignant' (default: the labels the data has)",
    )
    data.add_argument("--fold", type=int, metavar="I", help="train on cross-validation fold I of the split file (default: its train / val lists)")
    data.add_argument(
        "--folds",
        dest="all_folds",
        type=int,
        default=None,
        metavar="K",
        help="train every one of the split file's K cross-validation folds into OUT/fold-<i> and summarise them "
        "(mean and sd of the validation scores) in OUT/folds.json; re-run to resume",
    )
    data.add_argument(
        "--dataset-weight",
        dest="dataset_weights",
        action="append",
        default=None,
        metavar="NAME=W",
        help="relative share of training draws for a dataset (default: images drawn uniformly across datasets)",
    )
    data.add_argument(
        "--no-sampler", dest="weighted_sampler", action="store_false", default=None, help="cls, mt: no class-frequency sampler (default: on, as the paper)"
    )
    data.add_argument(
        "--hard-examples",
        dest="hard_examples",
        action="store_true",
        default=None,
        help="draw training images by how wrong the model last was on each (missed lesions, misclassified scans come round more often)",
    )

    optim = p.add_argument_group("optimiser and loss")
    optim.add_argument("--optimizer", help=f"one of {', '.join(OPTIMIZERS)} (default adam)")
    optim.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    optim.add_argument("--weight-decay", dest="weight_decay", type=float, help="default 0")
    optim.add_argument("--betas", type=float, nargs=2, default=None, metavar=("BETA1", "BETA2"), help="Adam / AdamW betas (default torch's 0.9 0.999)")
    optim.add_argument("--batch-size", dest="batch_size", type=int, help="images per step (default 8; per process with --gpus)")
    optim.add_argument("--loss", help=f"seg, mt (its masks): one of {', '.join(SEGMENTATION_LOSSES)} (default dice); cls: focal (default) or ce")
    optim.add_argument(
        "--focal-alpha",
        dest="focal_alpha",
        type=float,
        nargs="+",
        default=None,
        help="one value, or one per class in the model's class order (normal benign malignant unless --classes says otherwise); default 0.25",
    )
    optim.add_argument("--focal-gamma", dest="focal_gamma", type=float, help="default 2.0")
    optim.add_argument(
        "--class-loss-weight", dest="class_loss_weight", type=float, metavar="W", help="mt: loss = mask loss + W x focal loss of the class head (default 1.0)"
    )

    schedule = p.add_argument_group("schedule and stopping")
    schedule.add_argument("--epochs", type=int, help="most epochs (default 100)")
    schedule.add_argument("--patience", type=int, help="stop after this many epochs without a lower validation loss (default 25, the paper's)")
    schedule.add_argument("--scheduler", choices=SCHEDULERS, help="learning-rate schedule: default plateau (cls, the paper's) or none (seg)")
    schedule.add_argument(
        "--plateau-patience", dest="plateau_patience", type=int, help="plateau: epochs without improvement before the rate drops tenfold (default 25)"
    )
    schedule.add_argument(
        "--select",
        choices=["loss", "lesion_dice"],
        help="which epoch's weights are kept: lowest validation loss (default) or, seg / mt, highest validation Dice over lesion scans",
    )
    schedule.add_argument(
        "--ema", type=float, metavar="DECAY", help="keep an exponential moving average of the weights (e.g. 0.999); it is validated and saved instead"
    )
    schedule.add_argument(
        "--max-minutes", dest="max_minutes", type=float, help="wall-clock budget; stops cleanly after the epoch that crosses it (default none)"
    )

    augment = p.add_argument_group("augmentation")
    augment.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        default=None,
        help="paper (flips, rotations, colour jitter; default), strong (adds scale, shift, gamma, speckle noise, blur), "
        "scanner (strong plus framing, tints, gain, JPEG, burnt-in text, calipers, Doppler boxes), "
        "framing (random resized crops keeping 0.45-1.0 of the scan, gain, gamma, contrast, noise) or none",
    )
    augment.add_argument(
        "--lesion-paste",
        dest="lesion_paste",
        type=float,
        default=None,
        metavar="P",
        help="segmentation: with probability P, paste another training scan's lesion in at a random echogenicity, down to isoechoic (default 0)",
    )

    runtime = p.add_argument_group("runtime")
    runtime.add_argument(
        "--precision", choices=PRECISIONS, help="auto (default): bf16 autocast where the hardware computes it natively, with channels_last; bf16; fp32"
    )
    runtime.add_argument("--device", choices=DEVICES, help="default auto: the GPU when one is visible")
    runtime.add_argument(
        "--gpus",
        type=int,
        default=None,
        metavar="N",
        help="train on N GPUs of this machine with DistributedDataParallel (launches torchrun); --batch-size is per GPU. "
        "For CPU processes or several machines, run `torchrun --nproc_per_node N -m busai train ...` yourself",
    )
    runtime.add_argument("--num-workers", dest="num_workers", type=int, help="data-loader worker processes (default 0; results are the same for any count)")
    runtime.add_argument("--seed", type=int, help="random seed for weights, sampling and augmentation (default 0)")
    runtime.add_argument(
        "--log",
        choices=TRACKERS,
        default=None,
        help="also log per-epoch losses, metrics and learning rate to TensorBoard (RUN_DIR/tensorboard) or MLflow "
        "(MLFLOW_TRACKING_URI, else RUN_DIR/mlflow.db); needs the busai[tensorboard] / busai[mlflow] extra",
    )
    runtime.add_argument("--quiet", action="store_true", help="no progress bar")
    runtime.add_argument("--json", action="store_true", help="print the fit summary as JSON")
    p.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = TrainConfig.from_file(args.config).to_dict() if args.config else {}
    if args.task:
        base["task"] = args.task
    for key in [*_FLAGS, "betas", "weighted_sampler", "hard_examples", "lesion_paste", "augment", "color", "view", "crop_margin", "log", "sync_bn"]:
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.data is not None or args.formats or args.columns or args.mask_patterns:
        # Reading options travel with each dataset into config.json (DataSpec.to_config), so --resume reads the data alike.
        specs = [s.to_config() for s in data_specs(args, args.data if args.data is not None else base.get("data"))]
        base["data"] = specs[0] if len(specs) == 1 else specs
    if args.dataset_weights is not None:
        base["dataset_weights"] = _parse_weights(args.dataset_weights)
    alpha = args.focal_alpha
    if alpha is not None:
        base["focal_alpha"] = alpha[0] if len(alpha) == 1 else alpha
    if "task" not in base:
        from busai.errors import ConfigError

        raise ConfigError("say which task to train: `busai train seg ...`, `busai train cls ...` or `busai train mt ...`")
    if base["task"] in ("cls", "classification") and args.encoder is not None:
        from busai.errors import ConfigError

        raise ConfigError(f"--encoder {args.encoder}: classifiers have no separate encoder; name the network with --model (see `busai models`)")
    from busai.training import inherit_weights_folder

    base = inherit_weights_folder(base)  # --weights FOLDER: its architecture, input size and colour mode
    if base["task"] in ("cls", "classification") and "model" not in base:
        base["model"] = "resnet18"
    return TrainConfig.from_dict(base, source=args.config or "command line")


# What --resume may change: the budget. Everything else is the run's stored config.
_RESUME_OPTIONS = ("resume", "epochs", "max_minutes", "patience", "quiet", "json")


def _refuse_options_on_resume(args: argparse.Namespace) -> None:
    from busai.errors import ConfigError

    given = [key for key, value in vars(args).items() if key not in _RESUME_OPTIONS and key in _USER_OPTIONS and value is not None]
    if given:
        spelled = {
            "task": f"task {args.task}",
            "weighted_sampler": "--no-sampler",
            "dataset_weights": "--dataset-weight",
            "all_folds": "--folds",
            "formats": "--format",
            "mask_patterns": "--mask-pattern",
        }
        names = ", ".join(spelled.get(key, "--" + key.replace("_", "-")) for key in given)
        raise ConfigError(
            f"{names}: cannot change a run being resumed (only --epochs, --max-minutes and --patience can); "
            "drop them, or start a new run with `busai train --config RUN_DIR/config.json --out NEW_RUN` plus the changes"
        )


_USER_OPTIONS = {
    "task",
    "out",
    "config",
    *_FLAGS,
    "focal_alpha",
    "betas",
    "weighted_sampler",
    "hard_examples",
    "lesion_paste",
    "augment",
    "data",
    "formats",
    "columns",
    "mask_patterns",
    "dataset_weights",
    "color",
    "view",
    "crop_margin",
    "all_folds",
}


def _parse_weights(values: list[str]) -> dict[str, float]:
    from busai.errors import ConfigError

    weights = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            weights[name] = float(number)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ConfigError(f"--dataset-weight {value}: write NAME=WEIGHT, e.g. --dataset-weight uclm=2")
    return weights


def run(args: argparse.Namespace) -> int:
    from busai import distributed, training
    from busai.commands import command_line
    from busai.errors import ConfigError

    if args.gpus is not None:
        return launch_torchrun(args)
    distributed.init_from_env(args.device or "auto")  # under torchrun: join the group before any rank looks at the run folder
    if args.resume:
        _refuse_options_on_resume(args)
        result = training.resume(
            args.resume, epochs=args.epochs, max_minutes=args.max_minutes, patience=args.patience, quiet=args.quiet, command=command_line(args)
        )
        run_dir = args.resume
    else:
        if not args.out:
            raise ConfigError("--out RUN_DIR is required for a new run (or pass --resume RUN_DIR)")
        if args.all_folds is not None:
            summary = training.train_folds(config_from_args(args), args.out, args.all_folds, quiet=args.quiet, command=command_line(args))
            if args.json:
                print(json.dumps(summary))
            else:
                spread = ", ".join(f"{k} {summary['mean'][k]:.4f} (sd {summary['sd'][k]:.4f})" for k in summary["mean"])
                print(f"{args.out}: {len(summary['folds'])} folds; {spread}")
            return 0
        result = training.train(config_from_args(args), args.out, quiet=args.quiet, command=command_line(args))
        run_dir = args.out
    if not distributed.is_main():
        return 0  # rank 0 reports
    summary = {"run_dir": str(run_dir), **result.to_dict()}
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(
            f"{run_dir}: best epoch {result.best_epoch} (val loss {result.best_val_loss:.4f}), "
            f"{result.epochs_run} epochs, stopped by {result.stop_reason}, {result.seconds:.0f} s"
        )
    return 0


def launch_torchrun(args: argparse.Namespace) -> int:
    """``busai train --gpus N ...`` as ``torchrun --standalone --nproc_per_node N -m busai train ...``."""
    import subprocess
    import sys

    import torch

    from busai.errors import ConfigError

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.gpus < 1 or args.gpus > available:
        raise ConfigError(
            f"--gpus {args.gpus}: {available} CUDA GPU(s) visible; pass 1 to {available}"
            if available
            else f"--gpus {args.gpus}: no CUDA GPU is visible; for CPU processes run `torchrun --nproc_per_node {args.gpus} -m busai train ...`"
        )
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    forwarded, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--gpus":
            skip = True
        elif not item.startswith("--gpus="):
            forwarded.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.gpus), "-m", "busai", *forwarded]
    return subprocess.run(command, check=False).returncode
