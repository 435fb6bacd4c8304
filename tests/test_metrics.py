"""Segmentation and classification metrics against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from busai.errors import DataError
from busai.metrics import classification_report_dict, histogram_auc, lesion_detection, mean_with_ci, segmentation_counts, summarise_segmentation

MASK = np.array(
    [
        [0, 0, 0, 0],
        [0, 1, 1, 0],
        [0, 1, 1, 0],
        [0, 0, 0, 0],
    ]
)
PROB = np.array(
    [
        [0.1, 0.2, 0.1, 0.0],
        [0.6, 0.9, 0.8, 0.1],  # 0.6: false positive; 0.9, 0.8: true positives
        [0.0, 0.7, 0.4, 0.1],  # 0.7: true positive; 0.4: false negative
        [0.0, 0.1, 0.3, 0.2],
    ]
)
# tp=3 fp=1 fn=1 tn=11. Accuracy 14/16, Dice 2*3/(2*3+1+1) = 6/8, IoU 3/(3+1+1) = 3/5.
# AUC: positives 0.9, 0.8, 0.7 beat all 12 negatives, 0.4 beats 11 of them (not 0.6): 47/48.
HAND = {"pixel_accuracy": 14 / 16, "dice": 6 / 8, "iou": 3 / 5, "auc": 47 / 48}


def _value(summary: dict, metric: str, kind: str) -> float | None:
    return summary[metric][kind]["value"]


def test_segmentation_counts_by_hand():
    counts = segmentation_counts(PROB, MASK)
    assert (counts["tp"], counts["fp"], counts["fn"], counts["tn"]) == (3, 1, 1, 11)
    assert counts["auc"] == pytest.approx(47 / 48)
    assert counts["hist_pos"].sum() == 4 and counts["hist_neg"].sum() == 12
    summary = summarise_segmentation([counts], n_boot=50)
    for metric, expected in HAND.items():
        assert _value(summary, metric, "pooled") == pytest.approx(expected)
        assert _value(summary, metric, "mean") == pytest.approx(expected)


def test_empty_mask_conventions():
    empty = np.zeros((4, 4), dtype=np.uint8)
    correct_empty = segmentation_counts(np.full((4, 4), 0.1), empty)
    assert correct_empty["auc"] is None  # undefined: no lesion pixel
    false_alarm = segmentation_counts(np.where(np.eye(4) > 0, 0.9, 0.1), empty)
    full = segmentation_counts(np.full((4, 4), 0.9), np.ones((4, 4)))
    assert full["auc"] is None  # undefined: no background pixel

    summary = summarise_segmentation([segmentation_counts(PROB, MASK), correct_empty, false_alarm, full], n_boot=50)
    # Per-image Dice: 0.75, 1 (both empty), 0 (prediction only), 1 (both full).
    assert _value(summary, "dice", "mean") == pytest.approx((0.75 + 1 + 0 + 1) / 4)
    assert _value(summary, "iou", "mean") == pytest.approx((0.6 + 1 + 0 + 1) / 4)
    # Pooled: tp = 3 + 16, fp = 1 + 4, fn = 1.
    assert _value(summary, "dice", "pooled") == pytest.approx(2 * 19 / (2 * 19 + 5 + 1))
    assert _value(summary, "pixel_accuracy", "pooled") == pytest.approx((14 + 16 + 12 + 16) / 64)
    assert summary["n_images"] == 4 and summary["n_images_auc"] == 1
    assert _value(summary, "auc", "mean") == pytest.approx(47 / 48)
    # Two lesion images, both touched; two lesion-free images, one with a false alarm.
    assert summary["detection"] == {"lesion_images": 2, "missed_lesions": 0, "lesion_free_images": 2, "false_alarms": 1}


def test_detection_counts_a_lesion_missed_entirely_not_one_found_badly():
    lesion = np.zeros((4, 4), dtype=np.uint8)
    lesion[1:3, 1:3] = 1
    beside = np.zeros((4, 4))
    beside[0, 0] = 0.9  # a predicted pixel next to the lesion, none on it
    touching = np.zeros((4, 4))
    touching[0:2, 0:2] = 0.9  # one of four predicted pixels on the lesion
    rows = [segmentation_counts(np.zeros((4, 4)), lesion), segmentation_counts(beside, lesion), segmentation_counts(touching, lesion)]
    assert lesion_detection(rows) == {"lesion_images": 3, "missed_lesions": 2, "lesion_free_images": 0, "false_alarms": 0}


def test_all_empty_split_has_null_auc():
    summary = summarise_segmentation([segmentation_counts(np.zeros((4, 4)), np.zeros((4, 4)))], n_boot=20)
    assert summary["auc"]["pooled"] == {"value": None, "ci_low": None, "ci_high": None}
    assert summary["auc"]["mean"]["value"] is None
    assert _value(summary, "dice", "mean") == 1.0


def _random_split(n_images: int = 12, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    probs, masks = [], []
    for i in range(n_images):
        mask = np.zeros((size, size), dtype=np.uint8)
        if i % 4:  # every fourth image is normal (empty mask)
            top, left = rng.integers(0, size // 2, 2)
            mask[top : top + rng.integers(4, size // 2), left : left + rng.integers(4, size // 2)] = 1
        logit = rng.normal(0, 1.5, mask.shape) + np.where(mask > 0, 1.0, -1.0) * rng.uniform(0.5, 3.0)
        probs.append(1 / (1 + np.exp(-logit)))
        masks.append(mask)
    return probs, masks


def test_pooled_auc_matches_sklearn_and_ci_contains_values():
    probs, masks = _random_split()
    summary = summarise_segmentation([segmentation_counts(p, m) for p, m in zip(probs, masks)], n_boot=200, seed=1)
    exact = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([p.ravel() for p in probs]))
    assert _value(summary, "auc", "pooled") == pytest.approx(exact, abs=1e-3)
    per_image = [roc_auc_score(m.ravel(), p.ravel()) for p, m in zip(probs, masks) if 0 < m.sum() < m.size]
    assert _value(summary, "auc", "mean") == pytest.approx(np.mean(per_image))
    for metric in ("pixel_accuracy", "dice", "iou", "auc"):
        for kind in ("pooled", "mean"):
            entry = summary[metric][kind]
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], (metric, kind, entry)
            assert entry["ci_low"] < entry["ci_high"]


def _ci_width(entry: dict) -> float:
    return entry["ci_high"] - entry["ci_low"]


def test_duplicate_groups_are_resampled_whole():
    from busai.metrics import _resample_weights

    groups = np.array(["a", "a", "a", "b", "c"])
    weights = _resample_weights(groups, n_boot=200, seed=0)
    assert weights.shape == (200, 5) and (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, [0, 3, 4]].sum(axis=1) == 3).all()  # three groups drawn per resample, however large
    singles = _resample_weights(np.arange(5), n_boot=200, seed=0)
    assert (singles.sum(axis=1) == 5).all() and not (singles[:, 0] == singles[:, 1]).all()


def test_mean_with_ci_of_a_subset():
    assert mean_with_ci([]) == {"value": None, "ci_low": None, "ci_high": None}
    assert mean_with_ci([0.5, 0.5, 0.5]) == {"value": 0.5, "ci_low": 0.5, "ci_high": 0.5}
    # Two groups: a group of three zeros and one image scoring 1. Over groups a resample is all
    # zeros, all ones, or both (mean 0.25); over images the means fall on quarters of 4 draws.
    values, groups = [0.0, 0.0, 0.0, 1.0], ["a", "a", "a", "b"]
    by_group = mean_with_ci(values, groups, n_boot=400)
    assert by_group["value"] == 0.25 and by_group["ci_low"] == 0.0 and by_group["ci_high"] == 1.0
    by_image = mean_with_ci(values, n_boot=4000)  # P(mean >= 0.75) = 5%: enough resamples to see it
    assert by_image["ci_low"] == 0.0 and by_image["ci_high"] == 0.75


def test_segmentation_ci_over_duplicate_groups():
    lesion = np.zeros((4, 4), dtype=np.uint8)
    lesion[1:3, 1:3] = 1
    missed = segmentation_counts(np.zeros((4, 4)), lesion)  # Dice 0
    found = segmentation_counts(lesion.astype(float), lesion)  # Dice 1
    rows = [missed] * 7 + [found] * 7
    by_image = summarise_segmentation(rows, n_boot=500, seed=0)
    by_group = summarise_segmentation(rows, n_boot=500, seed=0, groups=["frames of one lesion"] * 7 + list("abcdefg"))
    assert _value(by_image, "dice", "mean") == _value(by_group, "dice", "mean") == 0.5  # same estimate
    # Seven copies of one miss are one observation: the interval over 8 groups is far wider.
    assert _ci_width(by_group["dice"]["mean"]) > 1.5 * _ci_width(by_image["dice"]["mean"])
    assert _ci_width(by_group["dice"]["pooled"]) > 1.5 * _ci_width(by_image["dice"]["pooled"])
    assert by_image["ci"] == "95% percentile bootstrap over images"
    assert by_group["ci"] == "95% percentile bootstrap over 8 groups of images"
    # One group holding every image: each resample is the whole split, so the interval is the point.
    whole = summarise_segmentation(rows, n_boot=50, groups=[0] * 14)
    assert whole["dice"]["mean"] == {"value": 0.5, "ci_low": 0.5, "ci_high": 0.5}


def test_classification_ci_over_duplicate_groups():
    y_true = [0] * 10 + [1] * 20 + [2] * 10
    predicted = [1] * 5 + [0] * 5 + [1] * 20 + [2] * 10  # five normal frames of one scan, all wrong
    groups = ["scan"] * 5 + [str(i) for i in range(35)]
    plain = classification_report_dict(y_true, _probs_for(predicted), n_boot=500)
    grouped = classification_report_dict(y_true, _probs_for(predicted), n_boot=500, groups=groups)
    assert plain["accuracy"]["value"] == grouped["accuracy"]["value"] == pytest.approx(35 / 40)
    assert _ci_width(grouped["accuracy"]) > 1.5 * _ci_width(plain["accuracy"])
    assert 0 <= grouped["accuracy"]["ci_low"] and grouped["accuracy"]["ci_high"] <= 1
    assert grouped["ci"] == "95% percentile bootstrap over 36 groups of samples"


def test_evaluation_groups_come_from_the_split():
    from busai.data.splits import duplicate_groups

    keys = ["benign/a.png", "benign/b.png", "benign/c.png", "normal/d.png"]
    splits = {"groups": [["normal/x.png", "normal/y.png"], ["benign/a.png", "benign/c.png"]]}
    assert duplicate_groups(splits, keys) == ["group 1", "benign/b.png", "group 1", "normal/d.png"]
    assert duplicate_groups({}, keys) == keys


def test_histogram_auc_extremes_and_shape_error():
    assert histogram_auc(np.array([0, 0, 5]), np.array([3, 0, 0])) == 1.0
    assert histogram_auc(np.array([0, 4, 0]), np.array([0, 4, 0])) == 0.5  # all tied
    with pytest.raises(DataError, match=r"prediction shape \(4, 4\) != mask shape \(2, 2\)"):
        segmentation_counts(PROB, np.zeros((2, 2)))


# --------------------------------------------------------------------------- classification
Y_TRUE = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 2, 1, 2, 2, 0]


def _probs_for(predictions: list[int]) -> np.ndarray:
    """0.6 on the predicted class, 0.2 on the others."""
    probs = np.full((len(predictions), 3), 0.2)
    probs[np.arange(len(predictions)), predictions] = 0.6
    return probs


def test_classification_report_by_hand():
    report = classification_report_dict(Y_TRUE, _probs_for(Y_PRED), n_boot=200)
    # Rows = true class, columns = predicted class.
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 3, 1], [1, 0, 2]]
    assert report["accuracy"]["value"] == pytest.approx(7 / 10)
    normal, benign, malignant = (report["per_class"][c] for c in ("normal", "benign", "malignant"))
    # normal: 2 of 3 predicted-normal are normal, 2 of 3 normals found; benign 3/4 and 3/4; malignant 2/3 and 2/3.
    assert (normal["precision"], normal["recall"], normal["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert (benign["precision"], benign["recall"], benign["f1"]) == pytest.approx((3 / 4, 3 / 4, 3 / 4))
    assert (malignant["precision"], malignant["recall"], malignant["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert [normal["support"], benign["support"], malignant["support"]] == [3, 4, 3]
    assert report["macro_f1"]["value"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)
    # AUC normal-vs-rest: positives score 0.6, 0.6, 0.2; negatives one 0.6, six 0.2.
    # Each 0.6 positive: 6 wins + 1/2 tie; the 0.2 positive: 6 half-ties -> (6.5 + 6.5 + 3) / 21.
    assert normal["auc"] == pytest.approx(16 / 21)
    assert benign["auc"] == pytest.approx((3 * 5.5 + 2.5) / 24)
    assert report["macro_auc"]["value"] == pytest.approx((16 / 21 + 19 / 24 + 16 / 21) / 3)
    for metric in ("accuracy", "macro_f1", "macro_auc"):
        entry = report[metric]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], (metric, entry)


def test_classification_missing_class_averages_over_present_classes():
    y_true = [0, 0, 1, 1, 1, 0]
    report = classification_report_dict(y_true, _probs_for([0, 1, 1, 1, 2, 0]), n_boot=50)
    malignant = report["per_class"]["malignant"]
    assert malignant["support"] == 0 and malignant["auc"] is None and malignant["predicted"] == 1
    # No malignant images: no score rather than a silent 0 dragging the macro averages down.
    assert malignant["precision"] is None and malignant["recall"] is None and malignant["f1"] is None
    assert report["confusion_matrix"][2] == [0, 0, 0]
    # normal: 2 of 2 predicted right, 2 of 3 found -> F1 0.8; benign: 2 of 3 and 2 of 3 -> 2/3.
    assert report["macro_f1"]["value"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert report["macro_recall"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert report["classes_present"] == ["normal", "benign"]
    assert report["note"] == "the data has no malignant images: macro averages are over normal, benign only"
    assert report["macro_auc"]["value"] == pytest.approx(np.mean([report["per_class"][c]["auc"] for c in ("normal", "benign")]))


def test_classification_shape_error():
    with pytest.raises(DataError, match="do not fit 3 labels and 3 classes"):
        classification_report_dict([0, 1, 2], np.ones((3, 2)) / 2)


def test_image_overlap_of_one_image():
    from busai.metrics import image_overlap, segmentation_counts

    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[:2, :2] = 1  # 4 lesion pixels
    prob = np.zeros((4, 4))
    prob[:2, :3] = 0.9  # 6 predicted: tp 4, fp 2, fn 0, tn 10
    scores = image_overlap(segmentation_counts(prob, mask))
    assert scores == pytest.approx({"pixel_accuracy": 14 / 16, "dice": 8 / 10, "iou": 4 / 6})
