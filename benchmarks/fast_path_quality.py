"""Does bf16 autocast + channels_last (the default path on a CPU with native bf16) train as well as
plain fp32? Issue 3's "at equal validation Dice within 0.01".

Trains the same configuration twice on real data, same seed, once with ``--precision fp32`` and
once with ``--precision bf16``, and compares the validation Dice of each run's best checkpoint (lowest
validation loss) and the wall-clock seconds per epoch. Each training is an ordinary resumable run
folder under ``--runs``, so an interrupted benchmark continues where it stopped. Writes
``results/fast_path_quality.json``.

    python benchmarks/fast_path_quality.py --data DATA_DIR --splits splits/busi.json
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import sys
from pathlib import Path

from busai.config import TrainConfig
from busai.engine import HISTORY
from busai.runs import library_versions, machine_info, write_json
from busai.training import resume, train


def run_one(args, precision: str) -> dict:
    run_dir = Path(args.runs) / precision
    if (run_dir / "fit.json").exists():  # finished earlier: reused
        pass
    elif (run_dir / "config.json").exists():  # interrupted: continued
        resume(run_dir, quiet=True)
    else:
        cfg = TrainConfig(
            task="segmentation",
            model=args.model,
            encoder=args.encoder,
            image_size=args.image_size,
            batch_size=args.batch_size,
            optimizer="adamw",
            lr=args.lr,
            weight_decay=1e-4,
            epochs=args.epochs,
            patience=args.epochs,
            precision=precision,
            seed=args.seed,
            data=args.data,
            splits=args.splits,
        )
        train(cfg, run_dir, quiet=True, command=f"{Path(sys.argv[0]).name} (precision {precision})")
    rows = list(csv.DictReader((run_dir / HISTORY).open()))
    best_epoch = json.loads((run_dir / "fit.json").read_text())["best_epoch"]  # the checkpoint the engine kept
    best = next(r for r in rows if int(r["epoch"]) == best_epoch)
    return {
        "run_dir": str(run_dir),
        "epochs": len(rows),
        "best_epoch": best_epoch,
        "best_val_loss": float(best["val_loss"]),
        "val_dice_at_best": float(best["val_dice"]),
        "max_val_dice": max(float(r["val_dice"]) for r in rows),
        "median_seconds_per_epoch": round(statistics.median(float(r["seconds"]) for r in rows), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--model", default="unet")
    p.add_argument("--encoder", default="efficientnet-lite0")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--epochs", type=int, default=12, help="fixed epochs for both (early stopping off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/fast_path_quality")
    p.add_argument("--out", default="results/fast_path_quality.json")
    args = p.parse_args()

    results = {precision: run_one(args, precision) for precision in ("fp32", "bf16")}
    fp32, fast = results["fp32"], results["bf16"]
    summary = {
        "command": "python " + shlex.join(sys.argv),
        "config": {k: v for k, v in vars(args).items() if k not in ("runs", "out")},
        "fp32": fp32,
        "bf16_channels_last": fast,
        "val_dice_difference": round(fast["val_dice_at_best"] - fp32["val_dice_at_best"], 4),
        "within_0.01": abs(fast["val_dice_at_best"] - fp32["val_dice_at_best"]) <= 0.01,
        "epoch_time_ratio": round(fp32["median_seconds_per_epoch"] / fast["median_seconds_per_epoch"], 2),
        **machine_info(),
        "versions": library_versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), summary)
    print(json.dumps({k: summary[k] for k in ("val_dice_difference", "within_0.01", "epoch_time_ratio")}))


if __name__ == "__main__":
    main()
