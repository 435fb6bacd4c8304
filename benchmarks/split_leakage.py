"""What is BUSI's duplicate leak worth? One training recipe on two splits, scored image by image.

The paper split BUSI image by image; BUSI holds near-duplicate frames of one lesion (143 groups,
322 images), so such a split puts copies of many val / test images in train. ``splits/busi.json``
keeps each group inside one split; ``splits/busi-leaky.json`` ignores them (same seed and class
counts) and lists its ``leaked`` images. Given a run trained on each (``seg-lite0-unet-leaky`` and
its control ``seg-lite0-unet-strongaug-imagenet`` in ``scripts/reproduce_busi.sh``, the same
recipe), this reads the per-image Dice that ``busai evaluate`` stored in each run's
``metrics.json`` and reports the mean Dice of every held-out split, and on the leaky split
separately for the images whose duplicate sits in train and for the rest, each with a 95% CI over
duplicate groups. Writes ``results/split_leakage.json``.

    python benchmarks/split_leakage.py --leaky runs/busi/seg-lite0-unet-leaky --leaky-splits splits/busi-leaky.json \\
        --control runs/busi/seg-lite0-unet-strongaug-imagenet --control-splits splits/busi.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from busai.data.splits import duplicate_groups, leaked_keys, read_splits
from busai.metrics import mean_with_ci
from busai.runs import read_run_config, write_json

HELD_OUT = ("val", "test")


def per_image_dice(run_dir: Path, split: str) -> dict[str, float]:
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    if "per_image" not in metrics.get(split, {}):
        sys.exit(f"error: {metrics_path} has no per-image scores for '{split}'; run `busai evaluate {run_dir} --split {split}` first")
    return {row["image"]: row["dice"] for row in metrics[split]["per_image"]}


def subset_summary(dice: dict[str, float], keys: list[str], splits: dict, n_boot: int) -> dict:
    values = [dice[k] for k in keys]
    groups = duplicate_groups(splits, keys)
    return {
        "images": len(keys),
        "groups": len(set(groups)),
        "mean_dice": mean_with_ci(values, groups, n_boot=n_boot),
        "dice_zero": sum(v == 0.0 for v in values),
    }


def score_run(run_dir: Path, splits_file: Path, n_boot: int, by_leak: bool) -> dict:
    splits = read_splits(splits_file)
    leaked = {split: set(keys) for split, keys in leaked_keys(splits).items()}
    config = read_run_config(run_dir)
    out: dict = {
        "run": str(run_dir),
        "splits": str(splits_file),
        "duplicates": splits.get("duplicates"),
        "command_trained": config["command"],
        "train": config["train"],
        "fit": json.loads((run_dir / "fit.json").read_text()),
    }
    for split in HELD_OUT:
        dice = per_image_dice(run_dir, split)
        keys = splits[split]
        row = {"all": subset_summary(dice, keys, splits, n_boot)}
        if by_leak:
            row["leaked"] = subset_summary(dice, [k for k in keys if k in leaked[split]], splits, n_boot)
            row["not_leaked"] = subset_summary(dice, [k for k in keys if k not in leaked[split]], splits, n_boot)
        out[split] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--leaky", required=True, type=Path, help="run trained on the image-by-image split")
    p.add_argument("--leaky-splits", required=True, type=Path)
    p.add_argument("--control", required=True, type=Path, help="the same recipe on the duplicate-aware split")
    p.add_argument("--control-splits", required=True, type=Path)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--out", type=Path, default=Path("results/split_leakage.json"))
    args = p.parse_args()

    result = {
        "command": shlex.join(["python", *sys.argv]),
        "metric": "mean over images of per-image Dice at threshold 0.5 (an empty prediction on a normal image scores 1)",
        "leaky": score_run(args.leaky, args.leaky_splits, args.n_boot, by_leak=True),
        "control": score_run(args.control, args.control_splits, args.n_boot, by_leak=False),
    }
    write_json(args.out, result)
    for name in ("control", "leaky"):
        for split in HELD_OUT:
            for subset, s in result[name][split].items():
                d = {k: "-" if v is None else f"{v:.3f}" for k, v in s["mean_dice"].items()}
                print(
                    f"{name:8s} {split:5s} {subset:11s} n={s['images']:3d} ({s['groups']:2d} groups)  Dice {d['value']} ({d['ci_low']}-{d['ci_high']})  Dice 0: {s['dice_zero']}"
                )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
