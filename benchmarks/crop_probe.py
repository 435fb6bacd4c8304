"""Does the lesion with its context tell benign from malignant better than the whole scan? (issue 28)

    python benchmarks/crop_probe.py --busi ../shared/data/Dataset_BUSI_with_GT --uclm ../shared/data/BUS-UCLM --seg-folds ref

A quick crop classifier once fell from validation AUC 0.66 to 0.57 while training. Before runs are
spent on crops, this asks whether the signal is there at all, with no training that could
over-fit: every lesion scan of train + val (benign or malignant, with a mask; test is never read)
goes once through a frozen ImageNet EfficientNet-Lite0 (grey, 224 px), its last feature map is
pooled (mean and max), and a class-balanced logistic regression is fitted out-of-fold over the
split file's patient- and duplicate-grouped folds. Views compared:

- ``scan``: the whole scan, as today's classifier sees it;
- ``crop m``: the ground-truth lesion's bounding box grown by ``m`` of its size on each side
  (:func:`busai.preprocessing.lesion_view`, what a ``--view lesion`` classifier sees), cut from the scan at twice the input size, resized;
- ``crop-pred 0.3``: the same around the largest component the segmenter predicted, each fold's
  ``runs/seg27/NAME/fold-I`` on its own validation scans (out-of-fold, as at predict time; a scan
  where it finds nothing falls back to the whole scan);
- ``shape``: scale-free shape features of the ground-truth mask alone (no image); ``shape-pred``:
  the same of the predicted mask (what predict has; zeros where it finds nothing);
- ``scan + crop 0.3``, ``crop 0.3 + shape``, ``crop-pred 0.3 + shape-pred`` and ``scan + shape-pred``:
  features side by side.

Per fold: AUC of malignant vs benign, pooled and per dataset; the table gives mean and sd over the
folds. The regression's C is fixed in advance (0.1; 0.01 and 1.0 in the JSON as a check that no
view wins by the choice). Writes ``results/crop_probe.json`` and ``.md``. ``--limit K`` keeps K
scans per fold (a check that it runs; its numbers mean nothing) and writes nothing under results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from seg_folds import cell, mean_sd  # the fold table's own mean ± sd (benchmarks/ is on the path of a script run from it)

ROOT = Path(__file__).resolve().parents[1]
SPLITS = "splits/busi-uclm.json"
SIZE = 224
MARGINS = (0.15, 0.3, 0.6, 1.0)
PRED_MARGIN = 0.3
CS = (0.01, 0.1, 1.0)
MAIN_C = 0.1


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Scale-free shape of the largest component: log relative area, depth / width, solidity,
    circularity, relative depth of its top, and the elongation of its second moments (the BI-RADS
    shape, orientation and margin cues in numbers; hand-written: no library gives this set)."""
    import cv2

    from busai.measure import largest_component

    region, count = largest_component(mask)
    if count == 0:
        return np.zeros(6)
    region = region.astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = float(region.sum())
    hull = float(cv2.contourArea(cv2.convexHull(contour))) or area
    perimeter = float(cv2.arcLength(contour, True)) or 1.0
    ys, xs = np.nonzero(region)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    cov = np.cov(np.stack([ys, xs])) if ys.size > 2 else np.eye(2)
    eig = np.sort(np.linalg.eigvalsh(cov))
    return np.array(
        [
            np.log(area / mask.size),
            height / width,
            min(area / hull, 1.0),
            4 * np.pi * area / perimeter**2,
            ys.min() / mask.shape[0],
            np.sqrt(max(eig[0], 1e-9) / max(eig[1], 1e-9)),
        ]
    )


def predicted_masks(run: Path, records: list, cache, size: int) -> list[np.ndarray]:
    """The fold's segmenter's masks (prob >= 0.5, as predict) at ``size`` x ``size``."""
    import cv2
    import torch

    import busai

    model = busai.load(run, task="segmentation", device="cpu")
    own = model.loaded.image_size
    masks = []
    for start in range(0, len(records), 16):
        chunk = records[start : start + 16]
        x = torch.stack([model.preprocess(cache.get(r, own)[0]) for r in chunk])
        with torch.inference_mode():
            probs = model.probabilities(x).numpy()
        masks += [cv2.resize((p >= 0.5).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) for p in probs]
    return masks


def view_images(records: list, cache, pred: list[np.ndarray] | None) -> dict[str, list[np.ndarray]]:
    """uint8 grey-RGB inputs of every view, SIZE x SIZE, in record order."""
    from busai.preprocessing import lesion_view, resize_image, to_gray_rgb

    views: dict[str, list[np.ndarray]] = {"scan": []}
    views.update({f"crop {m}": [] for m in MARGINS})
    if pred is not None:
        views[f"crop-pred {PRED_MARGIN}"] = []
    for i, record in enumerate(records):
        image, mask = cache.get(record, 2 * SIZE)
        image = to_gray_rgb(image)
        views["scan"].append(resize_image(image, SIZE))
        for m in MARGINS:
            views[f"crop {m}"].append(lesion_view(image, mask, (m,) * 4, SIZE))
        if pred is not None:  # an empty prediction gives the whole scan
            views[f"crop-pred {PRED_MARGIN}"].append(lesion_view(image, pred[i], (PRED_MARGIN,) * 4, SIZE))
    return views


def features(network, images: list[np.ndarray], mean, std, batch: int = 32) -> np.ndarray:
    import torch

    from busai.preprocessing import normalised

    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(np.stack([normalised(im, mean, std) for im in images[start : start + batch]]))
            deepest = network.forward_features(x).float()
            rows.append(torch.cat([deepest.mean((2, 3)), deepest.amax((2, 3))], 1).numpy())
    return np.concatenate(rows)


def fold_aucs(x: np.ndarray, y: np.ndarray, fold: np.ndarray, dataset: np.ndarray, c: float) -> list[dict]:
    """Per fold: AUC of a balanced logistic regression fitted on the other folds, pooled and per dataset."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = []
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced")).fit(x[train], y[train])
        score = model.predict_proba(x[test])[:, 1]
        row = {}
        for part in ("pooled", "busi", "uclm"):
            keep = np.ones(test.sum(), bool) if part == "pooled" else dataset[test] == part
            row[part] = float(roc_auc_score(y[test][keep], score[keep])) if len(set(y[test][keep])) == 2 else None
        out.append(row)
    return out


def table(results: dict) -> str:
    lines = [
        f"Benign vs malignant, linear probe on frozen ImageNet EfficientNet-Lite0 features, out-of-fold AUC (mean ± sd over {results['folds']} folds, C = {MAIN_C}). Command: `{results['command']}`",
        "",
        "| view | pooled | BUSI | BUS-UCLM |",
        "|---|---|---|---|",
    ]
    for view, entry in results["views"].items():
        cells = [cell(entry[str(MAIN_C)][p]) for p in ("pooled", "busi", "uclm")]
        lines.append(f"| {view} | " + " | ".join(cells) + " |")
    counts = results["scans"]
    lines += ["", f"{counts['total']} lesion scans ({counts['malignant']} malignant); the segmenter found nothing on {results.get('pred_empty', '–')} of them."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busi", required=True)
    parser.add_argument("--uclm", required=True)
    parser.add_argument("--seg-folds", default=None, metavar="NAME", help="add crops around each fold's predicted masks (runs/seg27/NAME/fold-I)")
    parser.add_argument("--limit", type=int, default=None, help="keep K scans per fold: a check that it runs, not a result")
    parser.add_argument("--out", default=None, help="results path without suffix (default results/crop_probe)")
    args = parser.parse_args(argv)

    from busai.data.dataset import ImageCache
    from busai.data.sources import parse_data_specs
    from busai.data.splits import load_split_records, read_splits
    from busai.device import best_threads
    from busai.models.registry import build
    from busai.runs import machine_info

    best_threads()
    started = time.perf_counter()
    specs = parse_data_specs([f"busi={args.busi}", f"uclm={args.uclm}"])
    splits = read_splits(ROOT / SPLITS)
    built = build("cls", "efficientnet_lite0", weights="imagenet", image_size=SIZE)
    network, pre = built.module.eval(), built.preprocessing
    cache = ImageCache()
    by_view: dict[str, list[np.ndarray]] = {}
    y, fold_of, dataset, shapes, pred_shapes, pred_empty = [], [], [], [], [], 0
    for fold in range(len(splits["folds"])):
        records = [r for r in load_split_records(specs, splits, "val", fold=fold) if r.label in ("benign", "malignant") and r.masks]
        records = records[:: max(1, len(records) // args.limit)][: args.limit] if args.limit else records  # spread over patients and classes
        pred = None
        if args.seg_folds:
            run = ROOT / "runs" / "seg27" / args.seg_folds / f"fold-{fold}"
            pred = predicted_masks(run, records, cache, 2 * SIZE)
            pred_empty += sum(int(p.sum() == 0) for p in pred)
        for view, images in view_images(records, cache, pred).items():
            by_view.setdefault(view, []).append(features(network, images, pre.mean, pre.std))
        shapes += [shape_features(cache.get(r, 2 * SIZE)[1]) for r in records]
        if pred is not None:
            pred_shapes += [shape_features(p) for p in pred]
        y += [int(r.label == "malignant") for r in records]
        fold_of += [fold] * len(records)
        dataset += [r.dataset for r in records]
        print(f"fold {fold}: {len(records)} lesion scans", file=sys.stderr)
    x = {view: np.concatenate(parts) for view, parts in by_view.items()}
    x["shape"] = np.stack(shapes)
    x["scan + crop 0.3"] = np.hstack([x["scan"], x["crop 0.3"]])
    x["crop 0.3 + shape"] = np.hstack([x["crop 0.3"], x["shape"]])
    if pred_shapes:
        x["shape-pred"] = np.stack(pred_shapes)
        x[f"crop-pred {PRED_MARGIN} + shape-pred"] = np.hstack([x[f"crop-pred {PRED_MARGIN}"], x["shape-pred"]])
        x["scan + shape-pred"] = np.hstack([x["scan"], x["shape-pred"]])
    y, fold_of, dataset = np.array(y), np.array(fold_of), np.array(dataset)
    results = {
        "command": "python benchmarks/crop_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "folds": int(len(np.unique(fold_of))),
        "scans": {"total": int(len(y)), "malignant": int(y.sum()), **{d: int((dataset == d).sum()) for d in ("busi", "uclm")}},
        "views": {},
    }
    if args.seg_folds:
        results["pred_empty"] = pred_empty
    for view, values in x.items():
        results["views"][view] = {}
        for c in CS:
            per_fold = fold_aucs(values, y, fold_of, dataset, c)
            results["views"][view][str(c)] = {p: mean_sd([row[p] for row in per_fold]) for p in ("pooled", "busi", "uclm")}
    results["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out) if args.out else (ROOT / "results" / "crop_probe" if not args.limit else Path("/tmp/crop_probe"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
