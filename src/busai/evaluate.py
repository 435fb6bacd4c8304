"""Evaluate a run folder on one split: metrics with bootstrap CIs into metrics.json, plus figures.

Segmentation is scored at each image's own resolution (the probability map is resized back to
the original mask), not at the network's input size, so the numbers describe the masks a user
gets. Both pooled (all pixels of the split) and mean-over-images values are reported; the
paper's Table 4 does not say which it used — the README discusses the comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from busai import CLASSES, SPLIT_NAMES
from busai.engine import default_path_name
from busai.errors import ConfigError
from busai.inference import predict_tensor, upsample_probability
from busai.runs import LoadedModel, load_model, model_label, write_json


def predict_records(loaded: LoadedModel, records, *, tta: bool = False, batch_size: int = 16):
    """Yield (record, probability) for every record, in order, through the training dataset's preprocessing."""
    from busai.data.dataset import BusDataset, ImageCache

    dataset = BusDataset(records, loaded.image_size, loaded.mean, loaded.std, cache=ImageCache())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    i = 0
    for batch in loader:
        probs = predict_tensor(loaded, batch["image"], tta=tta)
        for p in probs:
            yield records[i], p
            i += 1


def score_segmentation_image(record, prob: torch.Tensor) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """One image scored at its own resolution: (probability map, mask, pixel counts, its per-image row)."""
    from busai.data.discover import read_mask
    from busai.metrics import image_overlap, segmentation_counts

    mask = read_mask(record)
    full = upsample_probability(prob, mask.shape)
    counts = segmentation_counts(full, mask)
    overlap = image_overlap(counts)
    row = {
        "image": record.key, "label": record.label, "dice": round(overlap["dice"], 5), "iou": round(overlap["iou"], 5),
        "lesion_px": counts["tp"] + counts["fn"], "predicted_px": counts["tp"] + counts["fp"], "max_probability": round(float(full.max()), 5),
    }
    return full, mask, counts, row


def evaluate_segmentation(loaded: LoadedModel, records, *, n_boot: int, seed: int, tta: bool = False, groups=None) -> tuple[dict, list]:
    from busai.metrics import summarise_segmentation

    per_image, samples, scores = [], [], []
    for record, prob in predict_records(loaded, records, tta=tta):
        full, mask, counts, row = score_segmentation_image(record, prob)
        per_image.append(counts)
        samples.append((record, full, mask, counts))
        scores.append(row)
    summary = summarise_segmentation(per_image, n_boot=n_boot, seed=seed, groups=groups)
    summary["per_image"] = scores  # which images fail, and how: a missed lesion has predicted_px 0 or no overlap
    return summary, samples


def evaluate_classification(loaded: LoadedModel, records, *, n_boot: int, seed: int, tta: bool = False, groups=None) -> tuple[dict, list]:
    from busai.metrics import classification_report_dict

    rows = [(record, prob.numpy()) for record, prob in predict_records(loaded, records, tta=tta)]
    y_true = np.array([r.label_index for r, _ in rows])
    probs = np.stack([p for _, p in rows])
    report = classification_report_dict(y_true, probs, class_names=CLASSES, n_boot=n_boot, seed=seed, groups=groups)
    report["predictions"] = [
        {"image": r.key, "label": r.label, "predicted": CLASSES[int(p.argmax())], **{f"p_{c}": round(float(p[i]), 5) for i, c in enumerate(CLASSES)}}
        for r, p in rows
    ]
    return report, rows


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path,
    splits_file: str | Path,
    split: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    figures: bool = True,
    tta: bool = False,
    command: str | None = None,
    device: str = "cpu",
) -> dict:
    """Score a run's best checkpoint on ``split``; merge the result into ``RUN_DIR/metrics.json``.

    With ``tta`` (flip test-time augmentation, as ``busai predict --tta``) the result is stored
    under ``<split>_tta`` beside the plain one, and its figures are named the same way.
    """
    from busai.data.splits import duplicate_groups, load_split_records, read_splits
    from busai.runs import best_threads

    if split not in SPLIT_NAMES:
        raise ConfigError(f"split '{split}': unknown; choose train, val or test")
    best_threads()
    run_dir = Path(run_dir)
    loaded = load_model(run_dir, device=device)
    splits = read_splits(splits_file)
    records = load_split_records(data_dir, splits, split)
    if not records:
        raise ConfigError(f"{splits_file}: split '{split}' is empty; nothing to evaluate")
    torch.manual_seed(seed)
    evaluate = evaluate_segmentation if loaded.task == "segmentation" else evaluate_classification
    result, samples = evaluate(loaded, records, n_boot=n_boot, seed=seed, tta=tta, groups=duplicate_groups(splits, [r.key for r in records]))
    key = f"{split}_tta" if tta else split
    result = {
        "split": split, "tta": tta, "command": command, "images": len(records), "task": loaded.task, "model": loaded.spec,
        "weight_source": loaded.config.get("weight_source"), "n_boot": n_boot,
        "inference_path": default_path_name(next(loaded.module.parameters()).device), **result,
    }
    if figures:
        from busai import figures as fig

        if loaded.task == "segmentation":
            result["figure"] = fig.segmentation_samples(samples, run_dir / f"samples_{key}.png", title=f"{model_label(loaded.spec)}: {key}")
        else:
            result["figure"] = fig.confusion_matrix(np.array(result["confusion_matrix"]), run_dir / f"confusion_{key}.png", title=f"{model_label(loaded.spec)}: {key}")
            result["sample_figure"] = fig.classification_samples(samples, run_dir / f"samples_{key}.png", title=f"{model_label(loaded.spec)}: {key}")
    metrics_path = run_dir / "metrics.json"
    merged = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    merged[key] = result
    write_json(metrics_path, merged)
    return result

