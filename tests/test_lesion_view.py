"""A lesion-view classifier (``busai train cls --view lesion``): trained on crops around the mask,
predicted on crops around the segmenter's mask, one three-class diagnosis per scan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from busai.config import TrainConfig
from busai.errors import ConfigError


def test_the_lesion_view_defaults_to_lesion_classes_and_refuses_what_it_cannot_show():
    cfg = TrainConfig(task="cls", view="lesion", crop_margin=[0.2, 0.4])
    assert cfg.classes == ["benign", "malignant"] and cfg.crop_margin == (0.2, 0.4) and cfg.view_margin == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="--view lesion: classifiers only"):
        TrainConfig(task="seg", view="lesion")
    with pytest.raises(ConfigError, match="there is no 'normal' class"):
        TrainConfig(task="cls", view="lesion", classes=["normal", "benign", "malignant"])
    with pytest.raises(ConfigError, match=r"--crop-margin 0.5 0.2: give 0 <= LOW <= HIGH <= 2"):
        TrainConfig(task="cls", view="lesion", crop_margin=(0.5, 0.2))
    with pytest.raises(ConfigError, match="view 'crop': unknown"):
        TrainConfig(task="cls", view="crop")


def test_a_lesion_item_is_the_crop_drawn_per_epoch_and_the_same_on_every_redraw(synthetic_dir):
    from busai.data.dataset import BusDataset
    from busai.data.discover import discover_records
    from busai.preprocessing import lesion_view, normalised

    records = [r for r in discover_records(synthetic_dir) if r.segmentable and r.label != "normal"][:3]
    fixed = BusDataset(records, 32, (0.5,) * 3, (0.5,) * 3, lesion_margins=(0.3, 0.3))
    image, mask = fixed.cache.get(records[0], 64)
    expected = normalised(lesion_view(image, mask, (0.3,) * 4, 32), (0.5,) * 3, (0.5,) * 3)
    assert np.allclose(fixed[0]["image"].numpy(), expected)
    drawn = BusDataset(records, 32, (0.5,) * 3, (0.5,) * 3, lesion_margins=(0.1, 0.9), seed=3)
    first, again, later = drawn[(0, 1)]["image"], drawn[(0, 1)]["image"], drawn[(0, 2)]["image"]
    assert np.array_equal(first.numpy(), again.numpy()) and not np.array_equal(first.numpy(), later.numpy())


@pytest.fixture(scope="module")
def lesion_run(synthetic_dir, tiny_runs, seg_run):
    from busai.training import train

    out = tiny_runs / "cls-lesion"
    if not (out / "fit.json").is_file():
        cfg = TrainConfig(
            task="cls",
            model="efficientnet_lite0",
            weights="none",
            image_size=64,
            epochs=1,
            batch_size=4,
            view="lesion",
            crop_margin=(0.2, 0.4),
            color="gray",
            data=str(synthetic_dir),
            splits=str(tiny_runs / "splits.json"),
        )
        train(cfg, out, quiet=True)
    return out


def test_a_lesion_view_run_records_its_view_and_predicts_one_diagnosis_per_scan_with_a_segmenter(lesion_run, seg_run, synthetic_dir, cli):
    import busai
    from busai.data.discover import read_image

    config = json.loads((lesion_run / "config.json").read_text())
    assert config["preprocessing"]["view"] == "lesion" and config["preprocessing"]["margin"] == pytest.approx(0.3)
    assert config["model_spec"]["classes"] == ["benign", "malignant"]
    seg, cls = busai.load(seg_run, task="seg"), busai.load(lesion_run, task="cls")
    assert cls.loaded.preprocessing.lesion_view
    path = next(p for p in sorted(synthetic_dir.rglob("*.png")) if "_mask" not in p.name)
    scan = read_image(path)
    prediction = busai.predict([seg, cls], scan)
    assert set(prediction.probabilities) == {"normal", "benign", "malignant"} and sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert set(prediction.classifier_probabilities) == {"benign", "malignant"} and prediction.diagnosis == "fusion"
    # Its input is the crop the segmenter's mask outlines (the whole scan where it outlines nothing).
    from busai.inference import model_input, predict_tensor

    seg_prob = np.asarray(predict_tensor(seg.loaded, model_input(seg.loaded, scan)[None])[0])
    crop = model_input(cls.loaded, scan, mask=seg_prob >= 0.5)
    expected = np.asarray(predict_tensor(cls.loaded, crop[None])[0])
    assert np.allclose(list(prediction.classifier_probabilities.values()), expected, atol=1e-5)
    # Without a segmenter there is no lesion to cut: one line.
    with pytest.raises(ConfigError, match="predict it with a segmenter"):
        busai.predict([cls], scan)
    cli.fails("predict", path, "--out", lesion_run.parent / "no-seg", "--seg", "none", "--cls", lesion_run, expect="predict it with a segmenter (--seg)")


def test_scoring_a_lesion_view_classifier_on_a_dataset_feeds_it_the_crop_its_validation_saw(lesion_run, synthetic_dir):
    import busai
    from busai.data.dataset import ImageCache
    from busai.data.discover import discover_records
    from busai.inference import predict_records, predict_tensor

    loaded = busai.load(lesion_run, task="cls").loaded
    record = next(r for r in discover_records(synthetic_dir) if r.segmentable and r.label == "malignant")
    ((_, got),) = list(predict_records(loaded, [record]))
    image, mask = ImageCache().get(record, 2 * loaded.image_size)
    x = loaded.preprocessing.lesion_array(image, mask)
    assert np.allclose(np.asarray(got), np.asarray(predict_tensor(loaded, __import__("torch").from_numpy(x)[None])[0]), atol=1e-5)
