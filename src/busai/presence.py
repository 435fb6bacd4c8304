"""Lesion presence from a segmenter's probability map: is there a lesion on this scan at all?

A segmenter trained on lesion scans outlines something on many normal scans; what separates a
real lesion from such a false outline is mostly how sure and how large the largest predicted
component is. :class:`PresenceRule` keeps a scan's outline only when the largest component's peak
probability and area both reach thresholds fitted on out-of-fold predictions (so the fit never sees
the scans it is judged on). Written here because no library fits such a rule: the components are
:func:`busai.measure.largest_component`'s, the two thresholds a grid search over what the fold runs
predicted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from busai.config import MASK_THRESHOLD


def component_features(prob: np.ndarray, threshold: float = MASK_THRESHOLD, *, component: tuple[np.ndarray, int] | None = None) -> dict[str, float]:
    """Features of one (H, W) probability map: its peak, and the largest component (at ``threshold``)
    as a fraction of the image's area with its own peak probability. ``component`` is
    :func:`~busai.measure.largest_component` of ``prob >= threshold`` when the caller already has it."""
    from busai.measure import largest_component  # the lesion the measurements describe (8-connected)

    prob = np.asarray(prob, dtype=np.float32)
    largest, count = component if component is not None else largest_component(prob >= threshold)
    if count == 0:
        return {"max_prob": float(prob.max(initial=0.0)), "largest_area": 0.0, "largest_peak": 0.0, "components": 0}
    return {
        "max_prob": float(prob.max()),
        "largest_area": float(largest.sum() / prob.size),
        "largest_peak": float(prob[largest].max()),
        "components": int(count),
    }


@dataclass(frozen=True)
class PresenceRule:
    """Keep a scan's outline when its largest component peaks at ``min_peak`` or more and covers at
    least ``min_area`` of the image; otherwise the scan is called lesion-free and its mask emptied."""

    min_peak: float = 0.5
    min_area: float = 0.0

    def keeps(self, features: Mapping[str, float]) -> bool:
        return features["largest_area"] > 0 and features["largest_peak"] >= self.min_peak and features["largest_area"] >= self.min_area

    def apply(self, prob: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
        """The binary mask of ``prob`` at ``threshold``, emptied when the rule calls the scan lesion-free."""
        mask = np.asarray(prob) >= threshold
        return mask if self.keeps(component_features(prob, threshold)) else np.zeros_like(mask)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, float]) -> "PresenceRule":
        from busai.errors import ConfigError

        try:
            rule = cls(min_peak=float(values["min_peak"]), min_area=float(values["min_area"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"presence rule {dict(values)!r}: needs numbers min_peak and min_area; re-fit it with benchmarks/seg_folds.py") from None
        if not (0.0 <= rule.min_peak <= 1.0 and 0.0 <= rule.min_area <= 1.0):
            raise ConfigError(f"presence rule {rule.to_dict()}: min_peak and min_area must lie between 0 and 1")
        return rule

    @classmethod
    def fit(cls, rows: Iterable[Mapping]) -> "PresenceRule":
        """The thresholds that maximise mean Dice over all scans of ``rows`` (each with the
        :func:`component_features`, ``dice``, ``lesion`` (truth) and ``tp``): an emptied lesion scan
        scores 0, an emptied normal scan 1. Ties go to the lower thresholds (fewer lesions dropped)."""
        rows = list(rows)
        if not rows:
            return cls()
        peaks = np.array([r["largest_peak"] for r in rows], dtype=float)
        areas = np.array([r["largest_area"] for r in rows], dtype=float)
        dice = np.array([r["dice"] for r in rows], dtype=float)
        lesion = np.array([bool(r["lesion"]) for r in rows])
        emptied = np.where(lesion, 0.0, 1.0)
        peak_grid = np.round(np.arange(0.5, 1.0, 0.025), 3)
        area_grid = np.unique(np.concatenate([[0.0], np.quantile(areas[areas > 0], np.linspace(0, 0.5, 21)) if (areas > 0).any() else []]))
        best, best_score = cls(), -1.0
        for peak in peak_grid:
            for area in area_grid:
                keep = (areas > 0) & (peaks >= peak) & (areas >= area)
                score = float(np.where(keep, dice, emptied).mean())
                if score > best_score + 1e-12:
                    best, best_score = cls(min_peak=float(peak), min_area=float(area)), score
        return best
