"""The lesion-centred diagnosis: fusion, the consistency rule and lesion crops, on constructed examples."""

from __future__ import annotations

import numpy as np
import pytest

from busai.diagnosis import Fusion, lesion_crop, lesion_crop_box, lesion_features, malignant_share, review_note
from busai.errors import ConfigError


def test_crop_box_of_a_constructed_mask():
    mask = np.zeros((100, 200), bool)
    mask[40:60, 50:90] = True  # 20 high, 40 wide
    assert lesion_crop_box(mask, 0.5) == (30, 30, 70, 110)
    assert lesion_crop_box(mask, 5.0) == (0, 0, 100, 200)  # clipped to the image
    assert lesion_crop_box(np.zeros((5, 5), bool), 0.3) is None
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 50:90] = 255
    crop = lesion_crop(image, mask, margin=0.5, size=32)
    assert crop.shape == (32, 32, 3)
    assert crop[16, 16].tolist() == [255, 255, 255] and crop[1, 1].tolist() == [0, 0, 0]


def test_fusion_probabilities_by_hand():
    fusion = Fusion(coef=[2.0, 0.0, -1.0], intercept=-1.0)
    seg = {"largest_peak": 0.9, "largest_area": 0.04}
    cls = [0.5, 0.3, 0.2]  # normal logit 0
    # z = 2 * 0.9 - 1 = 0.8; p(lesion) = 1 / (1 + e^-0.8); q = 0.2 / 0.5
    p = 1 / (1 + np.exp(-0.8))
    out = fusion.diagnose(seg, cls)
    assert out["normal"] == pytest.approx(1 - p)
    assert out["benign"] == pytest.approx(p * 0.6)
    assert out["malignant"] == pytest.approx(p * 0.4)
    assert sum(out.values()) == pytest.approx(1.0)
    assert malignant_share([0.2, 0.0, 0.0]) == 0.5  # no lesion mass: undecided
    assert fusion.diagnose(seg, cls, q_malignant=0.9)["malignant"] == pytest.approx(p * 0.9)


def test_fusion_fit_learns_the_segmenter_evidence_and_round_trips():
    rng = np.random.default_rng(0)
    lesion = rng.random(200) < 0.5
    # The segmenter separates the two; the classifier is noise.
    rows = [
        lesion_features({"largest_peak": 0.95 if y else 0.55, "largest_area": 0.05}, [p, (1 - p) / 2, (1 - p) / 2])
        for y, p in zip(lesion, rng.uniform(0.1, 0.9, 200))
    ]
    fusion = Fusion.fit(np.array(rows), lesion, fitted_on="constructed")
    assert fusion.coef[0] > 1.0
    predicted = fusion.p_lesion(np.array(rows)) > 0.5
    assert (predicted == lesion).mean() > 0.95
    assert Fusion.from_dict(fusion.to_dict()) == fusion
    with pytest.raises(ConfigError, match="needs at least 30 scans"):
        Fusion.fit(np.array(rows[:10]), lesion[:10], fitted_on="too few")
    with pytest.raises(ConfigError, match="re-fit it"):
        Fusion.from_dict({"features": ["area"], "coef": [1.0], "intercept": 0})


def test_an_outlined_lesion_is_never_called_normal_without_a_note():
    assert "review" in review_note({"normal": 0.6, "benign": 0.3, "malignant": 0.1}, outlined=True)
    assert "no lesion is outlined" in review_note({"normal": 0.2, "benign": 0.7, "malignant": 0.1}, outlined=False)
    assert review_note({"normal": 0.2, "benign": 0.7, "malignant": 0.1}, outlined=True) is None
    assert review_note({"normal": 0.9, "benign": 0.05, "malignant": 0.05}, outlined=False) is None
