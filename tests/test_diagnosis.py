"""The lesion-centred diagnosis: fusion, the consistency rule and lesion crops, on constructed examples."""

from __future__ import annotations

import numpy as np
import pytest

from busai.diagnosis import Fusion, lesion_features, malignant_share
from busai.errors import ConfigError
from busai.preprocessing import Preprocessing, lesion_view, resize_image


def test_lesion_view_cuts_the_box_grown_by_its_margins_on_a_constructed_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # already at twice the view's size: no resize before the cut
    mask = np.zeros((64, 64), np.uint8)
    mask[16:32, 8:40] = 1  # 16 high, 32 wide
    mask[60:62, 60:62] = 1  # a smaller second component: not the one cut
    assert np.array_equal(lesion_view(image, mask, (0, 0, 0, 0), 32), resize_image(image[16:32, 8:40], 32))
    # half the height above and below, half the width each side: clipped at the left edge
    assert np.array_equal(lesion_view(image, mask, (0.5, 0.5, 0.5, 0.5), 32), resize_image(image[8:40, 0:56], 32))
    assert np.array_equal(lesion_view(image, mask, (0.25, 0, 0, 0.25), 32), resize_image(image[12:32, 8:48], 32))
    assert np.array_equal(lesion_view(image, np.zeros_like(mask), (0.5,) * 4, 32), resize_image(image, 32))  # no lesion: the scan
    # A mask at the scan's own size is resized with it, nearest: the same cut at twice the view's size.
    big, big_mask = np.repeat(np.repeat(image, 2, 0), 2, 1), np.repeat(np.repeat(mask, 2, 0), 2, 1)
    assert lesion_view(big, big_mask, (0, 0, 0, 0), 32).shape == (32, 32, 3)
    pre = Preprocessing(32, (0.5,) * 3, (0.5,) * 3, "gray", "lesion", 0.5)
    assert pre.lesion_array(image, mask).shape == (3, 32, 32)
    assert Preprocessing.from_dict(pre.to_dict()) == pre and "view" not in Preprocessing(32, (0.5,) * 3, (0.5,) * 3).to_dict()


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


def _phantom() -> np.ndarray:
    from busai.data.synthetic import make_phantom

    image, _ = make_phantom(np.random.default_rng(3), (128, 160), "malignant")
    return image


@pytest.fixture(scope="module")
def release_models():
    import busai

    return [busai.load("release", task="segmentation"), busai.load("release", task="classification")]


def test_predict_answers_with_the_release_fusion_by_hand(release_models):
    import json

    from busai.pipeline import predict_scans
    from busai.presence import component_features
    from busai.runs import RELEASE_DIR

    (pred,) = predict_scans(release_models, [_phantom()], gate=False, keep_probability=True)
    assert pred.diagnosis == "fusion"
    stored = Fusion.from_dict(json.loads((RELEASE_DIR / "classification" / "diagnosis.json").read_text()))
    own = pred.classifier_probabilities
    expected = stored.diagnose(component_features(pred.lesion_probability), list(own.values()))
    assert pred.probabilities == pytest.approx(expected)
    assert pred.label == max(expected, key=expected.get)
    row = pred.to_row()
    assert row["diagnosis"] == "fusion" and row["classifier_p_benign"] == round(own["benign"], 5)
    alone = predict_scans(release_models[1:], [_phantom()], gate=False)[0]  # no segmenter: the classifier's answer
    assert alone.diagnosis == "classifier" and alone.probabilities == pytest.approx(own)


def _classifier_copy(tmp_path, fusion: dict):
    import json
    import shutil

    from busai.runs import RELEASE_DIR

    folder = tmp_path / "classification"
    shutil.copytree(RELEASE_DIR / "classification", folder)
    (folder / "diagnosis.json").write_text(json.dumps(fusion))
    return folder


def test_an_outlined_lesion_is_never_called_normal_without_a_note(tmp_path, release_models):
    import busai
    from busai.pipeline import predict_scans
    from busai.runs import RELEASE_DIR

    # A fusion that calls every scan normal, with the release segmenter: threshold 0 outlines the whole scan.
    always_normal = {**Fusion(coef=[0.0, 0.0, 0.0], intercept=-10.0).to_dict(), "segmenter": str(RELEASE_DIR / "segmentation")}
    models = [release_models[0], busai.load(_classifier_copy(tmp_path, always_normal), task="classification")]
    (pred,) = predict_scans(models, [_phantom()], gate=False, threshold=0.0)
    assert pred.diagnosis == "fusion" and pred.label == "normal" and pred.measurements["lesion_count"] > 0
    assert "lesion outlined on a scan classified normal" in pred.review


def test_a_fusion_fitted_with_another_segmenter_is_not_used(tmp_path, release_models, caplog):
    import busai
    from busai.pipeline import predict_scans

    other = {**Fusion(coef=[0.0, 0.0, 0.0], intercept=-10.0).to_dict(), "segmenter": str(tmp_path / "some-other-segmenter")}
    models = [release_models[0], busai.load(_classifier_copy(tmp_path, other), task="classification")]
    with caplog.at_level("WARNING", logger="busai.diagnosis"):
        (pred,) = predict_scans(models, [_phantom()], gate=False)
    assert pred.diagnosis == "classifier" and pred.classifier_probabilities is None
    assert "the classifier answers alone" in caplog.text


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_evaluate_scores_the_diagnosis_predict_gives(tmp_path, release_models):
    from busai.data.discover import read_image
    from busai.data.sources import read_records
    from busai.data.synthetic import write_synthetic_dataset
    from busai.evaluation import evaluate_model
    from busai.pipeline import predict_scans

    data = write_synthetic_dataset(tmp_path / "data", n=9, size=(96, 128))
    results = evaluate_model("release", str(data), all_images=True, out=tmp_path / "out", n_boot=20, figures=False, precision="fp32")
    assert set(results) == {"segmentation", "classification", "diagnosis"}
    scored = results["diagnosis"]["all"]
    assert scored["task"] == "diagnosis" and scored["images"] == 9 and scored["fusion"]["features"]
    assert scored["inference_path"] == "fp32 eager (reference)"
    assert (tmp_path / "out" / "diagnosis" / "metrics.json").is_file()
    record = read_records([str(data)])[0]
    (pred,) = predict_scans(release_models, [read_image(record.image)], gate=False, precision="fp32")
    row = next(r for r in scored["predictions"] if r["image"] == record.key)
    assert [row[f"p_{c}"] for c in ("normal", "benign", "malignant")] == pytest.approx(list(pred.probabilities.values()), abs=1e-4)


def test_busai_predict_gives_the_diagnosis_the_python_api_gives(tmp_path, release_models, cli):
    import json

    from PIL import Image

    from busai.pipeline import predict_scans

    image = _phantom()
    Image.fromarray(image).save(tmp_path / "scan.png")
    code, _, err = cli("predict", tmp_path / "scan.png", "--out", tmp_path / "out", "--no-overlays")
    assert code == 0, err
    (row,) = json.loads((tmp_path / "out" / "predictions.json").read_text())
    (pred,) = predict_scans(release_models, [image])
    assert row["diagnosis"] == pred.diagnosis == "fusion" and row["label"] == pred.label
    assert [row[f"p_{c}"] for c in pred.probabilities] == pytest.approx(list(pred.probabilities.values()), abs=1e-4)
