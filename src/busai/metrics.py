"""Segmentation and classification metrics with 95% bootstrap confidence intervals.

Every interval is a percentile bootstrap over images (segmentation) or samples (classification),
or over their duplicate groups where those are given; undefined values are ``None`` so results
serialise to JSON as ``null``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.special import expit
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from busai.config import MASK_THRESHOLD, N_BOOT
from busai import CLASSES
from busai.errors import DataError

CONFIDENCE = 0.95
CI_METHOD = "95% percentile bootstrap"
N_BINS = 1000
# Histogram edges spaced evenly in logit space (-12..12), not in probability: a trained network
# puts most pixels at p < 0.001 or p > 0.999, where even 1/1000-wide bins would tie them and
# bias the pooled AUC. The first and last bins still reach exactly 0 and 1.
BIN_EDGES = np.concatenate(([0.0], expit(np.linspace(-12.0, 12.0, N_BINS - 1)), [1.0]))
SEGMENTATION_METRICS = ("pixel_accuracy", "dice", "iou", "auc")


# --------------------------------------------------------------------------- segmentation
def segmentation_counts(prob: np.ndarray, mask: np.ndarray, threshold: float = MASK_THRESHOLD) -> dict:
    """Per-image sufficient statistics for :func:`summarise_segmentation`.

    ``prob``: lesion probabilities in [0, 1]; ``mask``: ground truth {0, 1}; same shape. A pixel is
    predicted lesion when ``prob >= threshold``. Returns ints ``tp, fp, fn, tn``, ``auc`` (exact
    per-image ROC AUC, ``None`` when the mask is empty or full: AUC needs both classes) and
    ``hist_pos`` / ``hist_neg``: counts of lesion / background pixel probabilities in the
    :data:`BIN_EDGES` bins, from which a pooled AUC over all pixels of a split (and its bootstrap)
    is computed without keeping every pixel.
    """
    prob = np.asarray(prob, dtype=np.float64)
    truth = np.asarray(mask).astype(bool)
    if prob.shape != truth.shape:
        raise DataError(f"prediction shape {prob.shape} != mask shape {truth.shape}; resize the prediction to the mask first")
    pred = prob >= threshold
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = int(truth.size - tp - fp - fn)
    positives = int(np.count_nonzero(truth))
    auc = float(roc_auc_score(truth.ravel(), prob.ravel())) if 0 < positives < truth.size else None
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "auc": auc,
        "hist_pos": np.histogram(prob[truth], bins=BIN_EDGES)[0],
        "hist_neg": np.histogram(prob[~truth], bins=BIN_EDGES)[0],
    }


def image_overlap(counts: dict) -> dict[str, float]:
    """Pixel accuracy, Dice and IoU of one image from its :func:`segmentation_counts`."""
    return {k: float(v) for k, v in _overlap_scores(counts["tp"], counts["fp"], counts["fn"], counts["tn"]).items()}


def _overlap_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """Pixel accuracy, Dice and IoU from counts (any array shape); Dice = IoU = 1 when both are empty."""
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    union = tp + fp + fn
    empty = union == 0
    safe_union = np.where(empty, 1.0, union)
    return {
        "pixel_accuracy": (tp + tn) / (tp + fp + fn + tn),
        "dice": np.where(empty, 1.0, 2 * tp / (safe_union + tp)),
        "iou": np.where(empty, 1.0, tp / safe_union),
    }


def histogram_auc(hist_pos: np.ndarray, hist_neg: np.ndarray) -> np.ndarray:
    """ROC AUC from binned scores (last axis = bins): P(pos > neg) + 0.5 P(same bin); NaN without both classes."""
    hist_pos = np.asarray(hist_pos, dtype=np.float64)
    hist_neg = np.asarray(hist_neg, dtype=np.float64)
    negatives_below = np.cumsum(hist_neg, axis=-1) - hist_neg
    wins = np.sum(hist_pos * (negatives_below + 0.5 * hist_neg), axis=-1)
    pairs = hist_pos.sum(axis=-1) * hist_neg.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def summarise_segmentation(per_image: list[dict], n_boot: int = N_BOOT, seed: int = 0, groups: Sequence | None = None) -> dict:
    """Split-level metrics from :func:`segmentation_counts` rows, each with a 95% CI over images
    (or over their duplicate ``groups``).

    For ``pixel_accuracy``, ``dice``, ``iou`` and ``auc``:

    * ``pooled``: computed once over all pixels of the split (summed counts; AUC from the summed
      histograms, within ~1e-3 of sklearn on the raw pixels);
    * ``mean``: mean of per-image values. Per-image Dice and IoU are 1.0 when prediction and truth
      are both empty (e.g. a correctly empty normal image); images whose mask is empty or full have
      no per-image AUC and are left out of the AUC mean (``n_images_auc`` says how many remain).

    CIs: percentile bootstrap, written here because it resamples **groups**: ``groups`` gives each
    image's duplicate group (see :func:`_resample_weights`); None treats every image as its own.
    Each resample's pooled metrics are recomputed from its resampled sums and its means are weighted
    means, all resamples at once as matrix products; ``scipy.stats.bootstrap`` resamples single
    observations only and would call a multi-array statistic once per resample, far slower.
    Each value is ``{"value", "ci_low", "ci_high"}``; ``None`` where undefined.
    """
    if not per_image:
        raise DataError("no images to summarise; the split is empty")
    counts = {k: np.array([row[k] for row in per_image], dtype=np.float64) for k in ("tp", "fp", "fn", "tn")}
    hist_pos = np.stack([row["hist_pos"] for row in per_image]).astype(np.float64)
    hist_neg = np.stack([row["hist_neg"] for row in per_image]).astype(np.float64)
    per_image_values = _overlap_scores(**counts)
    has_auc = np.array([row["auc"] is not None for row in per_image])
    per_image_values["auc"] = np.array([row["auc"] for row in per_image if row["auc"] is not None], dtype=np.float64)

    pooled = _pooled_segmentation(counts, hist_pos, hist_neg, weights=np.ones((1, len(per_image))))
    groups = np.arange(len(per_image)) if groups is None else np.asarray(groups)
    resample_weights = _resample_weights(groups, n_boot, seed)
    pooled_boot = _pooled_segmentation(counts, hist_pos, hist_neg, weights=resample_weights)

    summary: dict = {}
    for metric in SEGMENTATION_METRICS:
        weights = resample_weights[:, has_auc] if metric == "auc" else resample_weights
        summary[metric] = {
            "pooled": _estimate(pooled[metric][0], *_percentile_interval(pooled_boot[metric])),
            "mean": _mean_with_ci(per_image_values[metric], weights),
        }
    summary.update(
        detection=lesion_detection(per_image),
        n_images=len(per_image),
        n_images_auc=int(per_image_values["auc"].size),
        n_boot=n_boot,
        ci=_ci_method(groups, "images"),
    )
    return summary


def lesion_detection(per_image: list[dict]) -> dict[str, int]:
    """Image-level view of a split's masks from :func:`segmentation_counts` rows.

    ``missed_lesions``: images with a lesion that no predicted pixel touches (Dice 0 whatever the
    lesion's size); ``false_alarms``: lesion-free images with any predicted pixel (also Dice 0).
    The mean Dice folds both into one number; these say how much of its shortfall is outright
    misses rather than imprecise borders.
    """
    has_lesion = [row["tp"] + row["fn"] > 0 for row in per_image]
    return {
        "lesion_images": sum(has_lesion),
        "missed_lesions": sum(row["tp"] == 0 for row, lesion in zip(per_image, has_lesion) if lesion),
        "lesion_free_images": len(per_image) - sum(has_lesion),
        "false_alarms": sum(row["fp"] > 0 for row, lesion in zip(per_image, has_lesion) if not lesion),
    }


def mean_with_ci(values: Sequence[float], groups: Sequence | None = None, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Mean of per-image ``values`` with a 95% percentile-bootstrap CI over images, or over their
    duplicate ``groups`` (for scores of a subset of a split, e.g. its leaked images)."""
    values = np.asarray(values, dtype=np.float64)
    groups = np.arange(values.size) if groups is None else np.asarray(groups)
    if values.size == 0:
        return _estimate(None, None, None)
    return _mean_with_ci(values, _resample_weights(groups, n_boot, seed))


def _resample_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) how often each of n items is drawn in each bootstrap resample.

    ``groups`` labels each item's group; a resample draws as many groups as there are, with
    replacement, and a drawn group brings all its items. BUSI holds near-duplicate frames of one
    lesion (a split keeps each duplicate group together): they are not independent observations,
    and resampling them one by one would give intervals that are too narrow. With every item its own
    group this is the ordinary bootstrap over items.
    """
    _, group_of_item = np.unique(groups, return_inverse=True)
    n_groups = int(group_of_item.max()) + 1
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)
    return drawn[:, group_of_item]


def _ci_method(groups: np.ndarray, items: str) -> str:
    # "groups", not "duplicate groups": callers merge duplicate images with each patient's scans where the data names patients.
    n_groups = len(np.unique(groups))
    return f"{CI_METHOD} over {items}" if n_groups == len(groups) else f"{CI_METHOD} over {n_groups} groups of {items}"


def _pooled_segmentation(counts: dict[str, np.ndarray], hist_pos: np.ndarray, hist_neg: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled metrics for each row of ``weights`` (a weighted sum of images = one resample)."""
    summed = {k: weights @ v for k, v in counts.items()}
    values = _overlap_scores(**summed)
    values["auc"] = histogram_auc(weights @ hist_pos, weights @ hist_neg)
    return values


def _mean_with_ci(values: np.ndarray, weights: np.ndarray) -> dict:
    """Mean of ``values`` and its percentile interval over resamples ``weights`` (n_boot, values.size)."""
    if values.size == 0:
        return _estimate(None, None, None)
    mean = float(values.mean())
    if values.size < 2 or np.ptp(values) == 0:  # no spread: every resample has the same mean
        return _estimate(mean, mean, mean)
    drawn = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample that drew none of these items: NaN, dropped
        resampled = (weights @ values) / drawn
    return _estimate(mean, *_percentile_interval(resampled))


def _percentile_interval(samples: np.ndarray) -> tuple[float | None, float | None]:
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None, None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _estimate(value, low, high) -> dict:
    def clean(x):
        return None if x is None or not np.isfinite(x) else float(x)

    return {"value": clean(value), "ci_low": clean(low), "ci_high": clean(high)}


# --------------------------------------------------------------------------- classification
def classification_report_dict(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] = CLASSES,
    n_boot: int = N_BOOT,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict:
    """Accuracy, per-class and macro precision/recall/F1, one-vs-rest ROC AUC and confusion matrix.

    ``y_true``: class indices (N,); ``probs``: class probabilities (N, C); the prediction is the
    argmax. ``confusion_matrix[i][j]`` counts samples of true class i predicted as j (sklearn).
    Macro averages run over the classes present in ``y_true``: a class the data lacks has no
    recall, and its precision and F1 would be 0 whatever the model learnt, so it is listed with
    ``None`` scores and its ``predicted`` count, left out of the averages, and ``note`` says so.
    AUC is one-vs-rest per class, ``None`` for a class absent from (or the only class in)
    ``y_true``; the macro AUC averages the defined ones.
    95% CIs for accuracy, macro F1 and macro AUC: percentile bootstrap over samples, or over their
    duplicate ``groups`` (see :func:`_resample_weights`), written here (vectorised, see
    :func:`_classification_bootstrap`) so that one set of paired (label, probability) resamples
    drives all three metrics.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(range(len(class_names)))
    if probs.ndim != 2 or probs.shape != (y_true.size, len(class_names)):
        raise DataError(f"probabilities of shape {probs.shape} do not fit {y_true.size} labels and {len(class_names)} classes")
    y_pred = probs.argmax(axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = [i for i in labels if support[i] > 0]
    absent = [class_names[i] for i in labels if support[i] == 0]
    auc_per_class = _one_vs_rest_auc(y_true, probs, labels)
    macro_auc = _mean_defined(auc_per_class)
    groups = np.arange(y_true.size) if groups is None else np.asarray(groups)
    boot = _classification_bootstrap(y_true, probs, labels, _resample_weights(groups, n_boot, seed), present)
    predicted = np.bincount(y_pred, minlength=len(labels))

    def scored(values: np.ndarray, i: int) -> float | None:
        return float(values[i]) if support[i] > 0 else None

    result = {
        "n_samples": int(y_true.size),
        "classes": list(class_names),
        "classes_present": [class_names[i] for i in present],
        "accuracy": _estimate(accuracy_score(y_true, y_pred), *_percentile_interval(boot["accuracy"])),
        "macro_precision": float(np.mean(precision[present])),
        "macro_recall": float(np.mean(recall[present])),
        "macro_f1": _estimate(float(np.mean(f1[present])), *_percentile_interval(boot["macro_f1"])),
        "macro_auc": _estimate(macro_auc, *_percentile_interval(boot["macro_auc"])),
        "per_class": {
            name: {
                "precision": scored(precision, i),
                "recall": scored(recall, i),
                "f1": scored(f1, i),
                "support": int(support[i]),
                "predicted": int(predicted[i]),
                "auc": auc_per_class[i],
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n_boot": n_boot,
        "ci": _ci_method(groups, "samples"),
    }
    if absent:
        shown = ", ".join(result["classes_present"])
        result["note"] = f"the data has no {' and no '.join(absent)} images: macro averages are over {shown} only"
    return result


def malignant_vs_benign_auc(
    y_true, probs: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0, groups: Sequence | None = None, class_names: Sequence[str] = CLASSES
) -> dict:
    """ROC AUC of p(malignant) / (p(malignant) + p(benign)) over the lesion scans alone, with a 95%
    CI over them (or their groups): how well the model ranks malignant above benign once a lesion
    is there, the question a biopsy decision turns on. None where one of the two classes is absent
    from the data or from ``class_names``."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if "benign" not in class_names or "malignant" not in class_names:
        return _estimate(None, None, None)
    benign, malignant = list(class_names).index("benign"), list(class_names).index("malignant")
    lesion = (y_true == benign) | (y_true == malignant)
    positive = y_true[lesion] == malignant
    if positive.all() or not positive.any():
        return _estimate(None, None, None)
    total = probs[lesion, malignant] + probs[lesion, benign]
    scores = np.divide(probs[lesion, malignant], total, out=np.full(total.shape, 0.5), where=total > 0)
    groups = np.arange(y_true.size) if groups is None else np.asarray(groups)
    boot = _resampled_auc(scores, positive, _resample_weights(groups[lesion], n_boot, seed))
    return _estimate(float(roc_auc_score(positive, scores)), *_percentile_interval(boot))


def _one_vs_rest_auc(y_true: np.ndarray, probs: np.ndarray, labels: list[int]) -> list[float | None]:
    # Per class with the binary sklearn score: roc_auc_score(multi_class="ovr") raises as soon as
    # one class is missing, which happens in small splits and bootstrap resamples.
    aucs: list[float | None] = []
    for label in labels:
        is_label = y_true == label
        defined = 0 < is_label.sum() < is_label.size
        aucs.append(float(roc_auc_score(is_label, probs[:, label])) if defined else None)
    return aucs


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _classification_bootstrap(y_true: np.ndarray, probs: np.ndarray, labels: list[int], weights: np.ndarray, present: list[int]) -> dict[str, np.ndarray]:
    """Accuracy, macro F1 (over the ``present`` classes) and macro one-vs-rest AUC for each paired resample (row) of ``weights``.

    Vectorised over resamples (a resample = how often each sample is drawn): confusion matrices
    are one matrix product and AUCs reuse :func:`histogram_auc` with one bin per distinct score,
    which is exact (ties count one half, as in sklearn). A loop calling sklearn per resample was
    the slowest part of an evaluation.
    """
    n_classes = len(labels)
    n_boot = weights.shape[0]
    y_pred = probs.argmax(axis=1)
    cell = y_true * n_classes + y_pred  # flat confusion-matrix cell of each sample
    confusion = (weights @ np.eye(n_classes * n_classes)[cell]).reshape(n_boot, n_classes, n_classes)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    f1_denominator = confusion.sum(axis=2) + confusion.sum(axis=1)  # (tp + fn) + (tp + fp)
    f1 = np.divide(2 * tp, f1_denominator, out=np.zeros_like(tp), where=f1_denominator > 0)  # zero_division=0
    aucs = np.stack([_resampled_auc(probs[:, label], y_true == label, weights) for label in labels], axis=1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no class pair in that resample
        macro_auc = np.nanmean(aucs, axis=1)
    return {"accuracy": tp.sum(axis=1) / weights.sum(axis=1), "macro_f1": f1[:, present].mean(axis=1), "macro_auc": macro_auc}


def _resampled_auc(scores: np.ndarray, is_positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` for every row of resample ``weights``; NaN where a class is absent."""
    _, bin_of_sample = np.unique(scores, return_inverse=True)
    one_hot = sparse.csr_array((np.ones(scores.size), (np.arange(scores.size), bin_of_sample)))
    hist_pos = (one_hot.T @ (weights * is_positive).T).T
    hist_neg = (one_hot.T @ (weights * ~is_positive).T).T
    return histogram_auc(hist_pos, hist_neg)
