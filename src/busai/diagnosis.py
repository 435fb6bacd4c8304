"""One diagnosis per scan from both models: lesion or not from the segmenter's evidence fused with
the classifier, then benign or malignant.

The whole-image classifier sees the frame, and the frame is what differs most between scanners;
the segmenter's largest component (how sure, how large) is the strongest lesion evidence busai
has. :class:`Fusion` combines them in two steps:

1. ``p(lesion)``: a logistic regression on the segmenter's component features and the classifier's
   ``p(normal)`` (scikit-learn fits it; its coefficients are stored as JSON beside the models);
2. ``p(malignant | lesion)``: the classifier's malignant share of its lesion probability (or a
   lesion-crop classifier's, when one is given);

so ``p(normal) = 1 - p(lesion)``, ``p(benign) = p(lesion) (1 - q)``, ``p(malignant) = p(lesion) q``
and the three always sum to one. :func:`fusion_for` finds a classifier's stored fusion; the
consistency rule (a scan whose mask outlines a lesion is never called normal without a note) is
:func:`busai.pipeline.review_note`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from dataclasses import asdict, dataclass, field

import numpy as np

from busai import CLASSES
from busai.config import LESION_CLASSES
from busai.errors import ConfigError

log = logging.getLogger(__name__)

# The inputs of the lesion-vs-normal step, in the order of the stored coefficients.
LESION_FEATURES = ("largest_peak", "sqrt_area", "cls_normal_logit")
_EPS = 1e-4


def lesion_features(seg: Mapping[str, float], cls_probs: Sequence[float], classes: Sequence[str] = ("normal", "benign", "malignant")) -> np.ndarray:
    """The fusion's inputs for one scan: the segmenter's largest component (``busai.presence.component_features``)
    and the classifier's ``p(normal)`` as a logit (so a sure classifier can outweigh a weak outline)."""
    p_normal = float(np.clip(cls_probs[list(classes).index("normal")], _EPS, 1 - _EPS)) if "normal" in classes else 0.5
    return np.array([float(seg["largest_peak"]), float(np.sqrt(seg["largest_area"])), float(np.log(p_normal / (1 - p_normal)))])


def malignant_share(cls_probs: Sequence[float], classes: Sequence[str] = ("normal", "benign", "malignant")) -> float:
    """``p(malignant) / (p(benign) + p(malignant))`` of a classifier's probabilities."""
    names = list(classes)
    benign, malignant = float(cls_probs[names.index("benign")]), float(cls_probs[names.index("malignant")])
    total = benign + malignant
    return malignant / total if total > 0 else 0.5


@dataclass
class Fusion:
    """The fitted lesion-vs-normal regression (``coef`` over :data:`LESION_FEATURES`, ``intercept``)."""

    coef: list[float] = field(default_factory=lambda: [0.0, 0.0, -1.0])  # unfitted: the classifier alone
    intercept: float = 0.0
    fitted_on: str = "unfitted"

    def p_lesion(self, features: np.ndarray) -> np.ndarray:
        z = np.asarray(features, dtype=float) @ np.asarray(self.coef, dtype=float) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def diagnose(
        self,
        seg: Mapping[str, float],
        cls_probs: Sequence[float],
        classes: Sequence[str] = ("normal", "benign", "malignant"),
        *,
        q_malignant: float | None = None,
    ) -> dict[str, float]:
        """``{"normal": p, "benign": p, "malignant": p}`` for one scan; ``q_malignant`` overrides the
        classifier's malignant share (a lesion-crop classifier's, for example)."""
        p = float(self.p_lesion(lesion_features(seg, cls_probs, classes)))
        q = malignant_share(cls_probs, classes) if q_malignant is None else float(q_malignant)
        return {"normal": 1.0 - p, "benign": p * (1.0 - q), "malignant": p * q}

    @classmethod
    def fit(cls, features: np.ndarray, is_lesion: Sequence[bool], fitted_on: str) -> "Fusion":
        """Fit on out-of-fold (or validation) rows: ``features`` (N, 3) from :func:`lesion_features`."""
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(is_lesion, dtype=int)
        if len(y) < 30 or y.min() == y.max():
            raise ConfigError(f"fusion fit on {len(y)} scans ({int(y.sum())} with a lesion): needs at least 30 scans with both lesion and normal ones")
        model = LogisticRegression(C=1.0, max_iter=1000).fit(np.asarray(features, dtype=float), y)
        return cls(coef=[float(c) for c in model.coef_[0]], intercept=float(model.intercept_[0]), fitted_on=fitted_on)

    @classmethod
    def segmenter_only(cls) -> "Fusion":
        """Unfitted, for a classifier without a normal class (a lesion-view one): ``p(lesion)`` from the
        segmenter's largest component alone, 0.5 where its peak probability is 0.5 and steep around it."""
        return cls(coef=[10.0, 0.0, 0.0], intercept=-5.0, fitted_on="unfitted: the segmenter's peak")

    def to_dict(self) -> dict:
        return {"features": list(LESION_FEATURES), **asdict(self)}

    @classmethod
    def from_dict(cls, values: Mapping) -> "Fusion":
        if list(values.get("features", LESION_FEATURES)) != list(LESION_FEATURES) or len(values.get("coef", [])) != len(LESION_FEATURES):
            raise ConfigError(f"fusion: stored for features {values.get('features')}, this busai reads {list(LESION_FEATURES)}; re-fit it")
        return cls(coef=[float(c) for c in values["coef"]], intercept=float(values["intercept"]), fitted_on=str(values.get("fitted_on", "")))


def fusion_for(classifier_source, segmenter_source, classes: Sequence[str]) -> Fusion | None:
    """The fusion stored beside a classifier (``diagnosis.json`` in its folder), or None when there is
    none, the classifier has other classes, or the segmenter is not the one it was fitted with (its
    features would mean something else): then the classifier answers alone."""
    from busai.errors import CheckpointError, read_json
    from busai.runs import DIAGNOSIS

    if tuple(classes) not in (CLASSES, tuple(LESION_CLASSES)) or classifier_source is None or segmenter_source is None:
        return None
    folder = _folder(classifier_source)
    path = folder / DIAGNOSIS
    if not path.is_file():
        return None
    values = read_json(path, error=CheckpointError, missing="missing", fix="delete it to answer with the classifier alone, or re-fit it")
    fusion = Fusion.from_dict(values)
    fitted_with = (folder / str(values.get("segmenter", ""))).resolve()
    if _folder(segmenter_source).resolve() != fitted_with:
        log.warning("%s: fitted with the segmenter in %s, not %s; the classifier answers alone", path, fitted_with, segmenter_source)
        return None
    return fusion


def _folder(source) -> Path:
    """The folder a model was loaded from (an .onnx file's own folder)."""
    path = Path(str(source))
    return path if path.is_dir() else path.parent
