"""Which lesions does the segmenter miss outright, and does the classifier see them?

Every model in the segmentation table of docs/results.md misses some validation lesions outright
(no predicted pixel on the lesion; the "Lesions missed" column). This lists, per split, each lesion image the segmentation model misses (Dice 0 at
threshold 0.5) with its class, duplicate group, lesion area (share of the image), the model's
highest lesion probability anywhere in the scan, and the classification model's verdict on the
same scan and the ``review`` note ``busai predict`` would give it; the summary counts how many of
the missed scans the classifier calls "normal", against its rate on all lesion scans of the split,
and how many of them that note flags. Train is included: a lesion missed there was missed
although the model trained on it. A figure per split shows the missed scans with the annotated
outline. Writes ``results/missed_lesions.json`` and
``results/segmentation/figures/missed_lesions_<split>.png``.

    python benchmarks/missed_lesions.py --data ../shared/data/Dataset_BUSI_with_GT --splits splits/busi.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from busai import CLASSES
from busai.data.discover import read_image, read_mask
from busai.data.splits import duplicate_groups, load_split_records, read_splits
from busai.evaluation import predict_records, score_segmentation_image
from busai.pipeline import review_note
from busai.release import resolve_model
from busai.runs import best_threads, write_json


def split_rows(seg, cls, records, groups: list[str]) -> list[dict]:
    """One row per lesion image: the segmenter's Dice and peak probability, the classifier's verdict,
    and predict's review note (a miss with an outline elsewhere on the scan gets none)."""
    verdicts = {record.key: prob.numpy() for record, prob in predict_records(cls, records)}
    rows = []
    for (record, prob), group in zip(predict_records(seg, records), groups):
        _, mask, _, scored = score_segmentation_image(record, prob)
        if not mask.any():
            continue
        p = verdicts[record.key]
        verdict = CLASSES[int(p.argmax())]
        rows.append(
            {
                "image": record.key,
                "label": record.label,
                "group": group,
                "dice": scored["dice"],
                "lesion_area": round(float(mask.mean()), 4),
                "max_probability": scored["max_probability"],
                "classifier": verdict,
                "p_normal": round(float(p[CLASSES.index("normal")]), 4),
                # review_note asks only whether anything is outlined, not how many components.
                "review": review_note(verdict, int(scored["predicted_px"] > 0)),
            }
        )
    return rows


def summarise(rows: list[dict]) -> dict:
    missed = [r for r in rows if r["dice"] == 0.0]
    found = [r for r in rows if r["dice"] > 0.0]
    return {
        "lesion_images": len(rows),
        "missed": len(missed),
        "missed_by_class": {c: sum(r["label"] == c for r in missed) for c in ("benign", "malignant")},
        "missed_groups": len({r["group"] for r in missed}),
        "missed_called_normal": sum(r["classifier"] == "normal" for r in missed),
        "all_lesions_called_normal": sum(r["classifier"] == "normal" for r in rows),
        "missed_flagged": sum(r["review"] is not None for r in missed),
        "median_lesion_area": {"missed": _median(missed), "found": _median(found)},
        "missed_images": missed,
    }


def _median(rows: list[dict]) -> float | None:
    return round(float(np.median([r["lesion_area"] for r in rows])), 4) if rows else None


def draw(rows: list[dict], records: dict, path: Path, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    n_rows = max(1, -(-len(rows) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(3 * cols, 3 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        record = records[row["image"]]
        ax.imshow(read_image(record.image, mode="L"), cmap="gray")
        ax.contour(read_mask(record), levels=[0.5], colors="lime", linewidths=1)
        ax.set_title(f"{Path(row['image']).stem}\nclassifier: {row['classifier']} (p normal {row['p_normal']:.2f})", fontsize=7)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the BUSI folder")
    parser.add_argument("--splits", required=True, help="splits file, e.g. splits/busi.json")
    parser.add_argument("--seg", default="release", help="segmentation model: 'release' or a run folder")
    parser.add_argument("--cls", default="release", help="classification model: 'release' or a run folder")
    parser.add_argument("--split", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--out", default="results/missed_lesions.json")
    parser.add_argument("--figures", default="results/segmentation/figures")
    args = parser.parse_args(argv)
    best_threads()
    seg, cls = resolve_model(args.seg, "segmentation"), resolve_model(args.cls, "classification")
    splits = read_splits(args.splits)
    result: dict = {
        "command": "python benchmarks/missed_lesions.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "segmentation_model": args.seg,
        "classification_model": args.cls,
        "missed": "a lesion image whose predicted mask (threshold 0.5, at the image's own resolution) has no pixel on the lesion",
    }
    for split in args.split:
        records = load_split_records(args.data, splits, split)
        summary = summarise(split_rows(seg, cls, records, duplicate_groups(splits, [r.key for r in records])))
        summary["figure"] = draw(
            summary["missed_images"],
            {r.key: r for r in records},
            Path(args.figures) / f"missed_lesions_{split}.png",
            f"{split}: lesions the segmenter misses (annotated outline in green)",
        )
        result[split] = summary
        print(
            f"{split}: {summary['missed']} of {summary['lesion_images']} lesions missed; the classifier calls "
            f"{summary['missed_called_normal']} of them normal ({summary['all_lesions_called_normal']} of all lesion scans)"
        )
    write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
