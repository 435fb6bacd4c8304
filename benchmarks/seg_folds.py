"""Out-of-fold scores of segmentation recipes: the table issue 27's choices are made on.

    python benchmarks/seg_folds.py --busi ../shared/data/Dataset_BUSI_with_GT --uclm ../shared/data/BUS-UCLM ref ref-ema

Each recipe NAME has one run per fold in ``runs/seg27/NAME/fold-I`` (``scripts/reproduce_seg27.sh``),
trained on that fold's train list of ``splits/busi-uclm.json`` (patient- and duplicate-grouped
folds over train + val; test is never touched). Every run predicts its own fold's validation
images, so every train + val image is scored once by a model that never saw it. Per fold:
Dice over lesion scans, lesions missed (no predicted pixel on the lesion), normals outlined (any
predicted pixel on a lesion-free scan) and Dice over all scans; the table gives the mean and sd
over folds, each dataset apart and pooled. Scores are at the model's input size (masks resized
with nearest neighbour), the same for every recipe.

The lesion-presence rule (``busai.presence``) is fitted on the other folds' predictions and applied
to each fold, so its row is out-of-fold too. Each fold's per-image out-of-fold features are kept
in ``results/seg_folds/NAME[+tta]/fold-I.csv`` (committed: a table can be re-made, and folds added
in later sessions, without the run folders; the diagnosis work reads them too); a fold whose CSV
exists is not predicted again unless ``--refresh``. Writes ``results/seg_folds.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPLITS = "splits/busi-uclm.json"


def fold_predictions(run: Path, records, tta: bool, batch: int = 16) -> list[dict]:
    """Per-image out-of-fold features of one fold's run on its validation records."""
    import torch

    import busai
    from busai.data.dataset import ImageCache
    from busai.metrics import segmentation_counts
    from busai.presence import component_features

    model = busai.load(run, task="segmentation", device="cpu")
    size = model.loaded.image_size
    cache = ImageCache()
    rows = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        pairs = [cache.get(r, size) for r in chunk]
        x = torch.stack([model.preprocess(image) for image, _ in pairs])
        with torch.inference_mode():
            probs = model.probabilities(x, tta=tta).numpy()
        for record, (_, mask), prob in zip(chunk, pairs, probs):
            counts = segmentation_counts(prob, mask > 0)
            tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
            dice = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            rows.append(
                {
                    "key": record.key,
                    "dataset": record.dataset,
                    "label": record.label,
                    "lesion": tp + fn > 0,
                    "tp": tp,
                    "fp": fp,
                    "fn": fn,
                    "dice": dice,
                    **component_features(prob),
                }
            )
    return rows


def fold_scores(rows: list[dict], dice_key: str = "dice", fp_key: str = "fp", tp_key: str = "tp") -> dict:
    lesion = [r for r in rows if r["lesion"]]
    normal = [r for r in rows if not r["lesion"]]
    return {
        "lesion_dice": float(np.mean([r[dice_key] for r in lesion])) if lesion else None,
        "missed": float(np.mean([r[tp_key] == 0 for r in lesion])) if lesion else None,
        "normals_outlined": float(np.mean([r[fp_key] > 0 for r in normal])) if normal else None,
        "dice_all": float(np.mean([r[dice_key] for r in rows])) if rows else None,
        "images": len(rows),
    }


def with_rule(rows: list[dict], rule) -> list[dict]:
    """Rows as they score after the presence rule empties the scans it judges lesion-free."""
    out = []
    for r in rows:
        keep = rule.keeps(r)
        out.append({**r, "dice": r["dice"] if keep else (0.0 if r["lesion"] else 1.0), "fp": r["fp"] if keep else 0, "tp": r["tp"] if keep else 0})
    return out


def mean_sd(values: list[float | None]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None}
    return {"mean": round(float(np.mean(values)), 4), "sd": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", help="recipe names (runs/seg27/NAME/fold-I)")
    parser.add_argument("--busi", required=True)
    parser.add_argument("--uclm", required=True)
    parser.add_argument("--tta", action="store_true", help="also score each recipe with flip TTA (latency beside it)")
    parser.add_argument("--refresh", action="store_true", help="predict every fold again, even those with a CSV")
    parser.add_argument("--out", default=str(ROOT / "results" / "seg_folds"))
    args = parser.parse_args(argv)

    from busai.data.sources import parse_data_specs
    from busai.data.splits import load_split_records, read_splits
    from busai.presence import PresenceRule
    from busai.runs import machine_info

    specs = parse_data_specs([f"busi={args.busi}", f"uclm={args.uclm}"])
    splits = read_splits(ROOT / SPLITS)
    n_folds = len(splits.get("folds") or [])
    out = Path(args.out)
    results = {"command": "python benchmarks/seg_folds.py " + " ".join(sys.argv[1:] if argv is None else argv), "machine": machine_info()}
    results["recipes"] = {}
    for name in args.recipes:
        for tta in [False, True] if args.tta else [False]:
            label = f"{name} + flip TTA" if tta else name
            per_fold, seconds, images = {}, 0.0, 0
            for fold in range(n_folds):
                run = ROOT / "runs" / "seg27" / name / f"fold-{fold}"
                cached = out / (label.replace(" + flip TTA", "+tta")) / f"fold-{fold}.csv"
                finished = (run / "fit.json").is_file()
                if cached.is_file() and not (args.refresh and finished):
                    per_fold[fold], fold_seconds = read_rows(cached)
                elif finished:
                    records = load_split_records(specs, splits, "val", fold=fold)
                    started = time.perf_counter()
                    rows = fold_predictions(run, records, tta)
                    fold_seconds = time.perf_counter() - started
                    write_rows(cached, rows, fold_seconds)
                    per_fold[fold] = rows
                else:
                    continue
                seconds += fold_seconds
                images += len(per_fold[fold])
            if not per_fold:
                print(f"{name}: no fold runs under runs/seg27/{name}/", file=sys.stderr)
                continue
            entry = {"folds": sorted(per_fold), "seconds_per_image": round(seconds / max(images, 1), 4), "scores": {}, "with_rule": {}}
            for part in ("pooled", "busi", "uclm"):
                chosen = {f: [r for r in rows if part == "pooled" or r["dataset"] == part] for f, rows in per_fold.items()}
                folds_scores = [fold_scores(rows) for rows in chosen.values()]
                entry["scores"][part] = {k: mean_sd([s[k] for s in folds_scores]) for k in ("lesion_dice", "missed", "normals_outlined", "dice_all")}
                # The presence rule: fitted on the other folds, applied to this one.
                ruled = []
                for f, rows in chosen.items():
                    others = [r for g, rs in per_fold.items() if g != f for r in rs]
                    rule = PresenceRule.fit(others) if len(per_fold) > 1 else PresenceRule.fit(rows)
                    ruled.append(fold_scores(with_rule(rows, rule)))
                entry["with_rule"][part] = {k: mean_sd([s[k] for s in ruled]) for k in ("lesion_dice", "missed", "normals_outlined", "dice_all")}
            entry["rule_all_folds"] = PresenceRule.fit([r for rows in per_fold.values() for r in rows]).to_dict()
            results["recipes"][label] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(results) + "\n")
    print(table(results))
    return 0


_NUMBERS = {"tp": int, "fp": int, "fn": int, "components": int, "dice": float, "max_prob": float, "largest_area": float, "largest_peak": float}


def write_rows(path: Path, rows: list[dict], seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write(f"# seconds={seconds:.3f}\n")
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def read_rows(path: Path) -> tuple[list[dict], float]:
    with open(path, newline="") as fh:
        seconds = float(fh.readline().split("=", 1)[1])
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key, kind in _NUMBERS.items():
            row[key] = kind(row[key])
        row["lesion"] = row["lesion"] == "True"
    return rows, seconds


def cell(s: dict) -> str:
    """A :func:`mean_sd` entry as a table cell: mean ± sd, the mean alone for one fold, a dash for none."""
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.3f} ± {s['sd']:.3f}" if s["sd"] is not None else f"{s['mean']:.3f}"


def table(results: dict) -> str:
    lines = [
        f"Out-of-fold, mean ± sd over folds. Command: `{results['command']}`",
        "",
        "| recipe | folds | scored on | Dice, lesion scans | lesions missed | normals outlined | Dice, all | with presence rule: Dice, all | missed | normals outlined | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["recipes"].items():
        for part in ("pooled", "busi", "uclm"):
            s, w = entry["scores"][part], entry["with_rule"][part]
            lines.append(
                f"| {name} | {len(entry['folds'])} | {part} | {cell(s['lesion_dice'])} | {cell(s['missed'])} | {cell(s['normals_outlined'])} | "
                f"{cell(s['dice_all'])} | {cell(w['dice_all'])} | {cell(w['missed'])} | {cell(w['normals_outlined'])} | {entry['seconds_per_image']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
