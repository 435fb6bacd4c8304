"""Label sets: a classifier over a subset or mapping of the classes, stored with the run and used
by evaluate / predict; evaluate on data lacking a class averages over the classes present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from busai.errors import ConfigError
from busai.labels import parse_classes, resolve


def _two_class_manifest(synthetic_dir: Path, out: Path) -> Path:
    """A benign / malignant-only manifest (biopsy-confirmed data has no normal scans) over the synthetic images."""
    import shutil

    rows = ["image,mask,label"]
    for label in ("benign", "malignant"):
        # The files sit inside the manifest's folder, as a manifest requires (paths relative to it).
        shutil.copytree(synthetic_dir / label, out / label, dirs_exist_ok=True)
        for image in sorted((out / label).glob(f"{label} (*).png")):
            if "_mask" in image.name:
                continue
            masks = ";".join(m.relative_to(out).as_posix() for m in sorted(out.joinpath(label).glob(f"{image.stem}_mask*.png")))
            rows.append(f"{image.relative_to(out).as_posix()},{masks},{label}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def two_class(tmp_path_factory):
    from busai.data.sources import read_records
    from busai.data.splits import make_splits, write_splits
    from busai.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("two_class")
    # Other phantoms than the session's tiny runs trained on (seed 1): the leak guard knows those by content.
    manifest = _two_class_manifest(write_synthetic_dataset(root / "phantoms", n=24, seed=1, size=(64, 80)), root / "data")
    splits = root / "splits.json"
    write_splits(splits, make_splits(read_records(str(manifest)), [], val=0.25, test=0.25, seed=0))
    return manifest, splits


def test_classes_option_forms():
    assert parse_classes("benign, malignant") == ["benign", "malignant"]
    assert parse_classes("normal=benign,Benign=benign,malignant=malignant") == {"normal": "benign", "benign": "benign", "malignant": "malignant"}
    assert resolve(None, ["malignant", "benign", None, "benign"]) == (("benign", "malignant"), {"benign": "benign", "malignant": "malignant"})
    assert resolve({"normal": "benign", "benign": "benign", "malignant": "malignant"}, [])[0] == ("benign", "malignant")
    with pytest.raises(ConfigError, match="at least 2 classes"):
        parse_classes("benign")
    with pytest.raises(ConfigError, match="names a class twice"):
        parse_classes("benign,benign")


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_two_class_manifest_trains_and_evaluates_a_two_class_classifier(two_class, synthetic_dir, tmp_path, cli):
    manifest, splits = two_class
    run = tmp_path / "run"
    common = ("--data", manifest, "--splits", splits, "--weights", "none", "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--quiet")
    code, _, err = cli("train", "cls", "--model", "efficientnet_lite0", "--out", run, *common)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model_spec"]["classes"] == ["benign", "malignant"] and config["model_spec"]["num_classes"] == 2

    code, out, err = cli("evaluate", run, "--data", manifest, "--splits", splits, "--split", "test", "--n-boot", "20", "--no-figures")
    assert code == 0, err
    result = json.loads((run / "metrics.json").read_text())["test"]
    assert result["classes"] == ["benign", "malignant"] and "note" not in result
    assert set(result["predictions"][0]) >= {"p_benign", "p_malignant"} and "p_normal" not in result["predictions"][0]
    truth = [p["label"] for p in result["predictions"]]
    assert result["per_class"]["malignant"]["support"] == truth.count("malignant")

    # The stored names reach predict: the label is one of the two classes, p_normal stays empty.
    import busai

    model = busai.load(run)
    assert model.classes == ("benign", "malignant")
    prediction = busai.predict(model, synthetic_dir / "benign" / "benign (1).png")
    assert prediction.label in ("benign", "malignant") and set(prediction.probabilities) == {"benign", "malignant"}
    assert prediction.to_row()["p_normal"] is None


def test_classes_subset_leaves_other_labels_out(synthetic_dir, tiny_runs, cls_run, tmp_path, cli):
    # cls_run's split file covers all three classes; --classes keeps two of them.
    run = tmp_path / "run"
    code, _, err = cli(
        "train", "cls", "--model", "efficientnet_lite0", "--classes", "benign,malignant", "--data", synthetic_dir, "--splits", tiny_runs / "splits.json",
        "--weights", "none", "--image-size", "64", "--epochs", "1", "--quiet", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model_spec"]["classes"] == ["benign", "malignant"]
    assert config["train_images"] == sum(1 for k in json.loads((tiny_runs / "splits.json").read_text())["train"] if not k.startswith("normal/"))


def test_classes_refused_for_segmentation(cli, synthetic_dir, tmp_path):
    cli.fails("train", "seg", "--classes", "benign,malignant", "--data", synthetic_dir, "--out", tmp_path / "r", expect="segmentation model has no classes")


def test_three_class_model_on_two_class_data_averages_over_present_classes(cls_run, two_class, tmp_path, cli):
    manifest, _ = two_class
    out = tmp_path / "scores"
    code, stdout, err = cli("evaluate", cls_run, "--data", manifest, "--all", "--out", out, "--n-boot", "20", "--no-figures")
    assert code == 0, err
    result = json.loads((out / "classification" / "metrics.json").read_text())["all"]
    assert result["classes"] == ["normal", "benign", "malignant"] and result["classes_present"] == ["benign", "malignant"]
    normal = result["per_class"]["normal"]
    assert normal["support"] == 0 and normal["recall"] is None and normal["f1"] is None
    # Macro F1 by hand from the per-image predictions, over benign and malignant alone.
    preds = result["predictions"]
    f1s = []
    for c in ("benign", "malignant"):
        tp = sum(p["label"] == c and p["predicted"] == c for p in preds)
        fp = sum(p["label"] != c and p["predicted"] == c for p in preds)
        fn = sum(p["label"] == c and p["predicted"] != c for p in preds)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    assert result["macro_f1"]["value"] == pytest.approx(np.mean(f1s))
    assert normal["predicted"] == sum(p["predicted"] == "normal" for p in preds)
    assert result["note"] == "the data has no normal images: macro averages are over benign, malignant only"
    assert "no normal images" in stdout


def test_two_class_model_leaves_out_images_of_other_classes(cls_two_class_run, synthetic_dir, tmp_path, cli):
    out = tmp_path / "scores"
    code, _, err = cli("evaluate", cls_two_class_run, "--data", synthetic_dir, "--all", "--out", out, "--n-boot", "20", "--no-figures")
    assert code == 0, err
    result = json.loads((out / "classification" / "metrics.json").read_text())["all"]
    normals = sum(1 for _ in synthetic_dir.joinpath("normal").glob("normal (*).png") if "_mask" not in _.name)
    assert sum("not among the model's classes" in reason for reason in result["skipped"].values()) == normals
    assert "images labelled normal are left out" in err


@pytest.fixture(scope="module")
def cls_two_class_run(two_class, tmp_path_factory) -> Path:
    from busai.config import TrainConfig
    from busai.training import train

    manifest, splits = two_class
    out = tmp_path_factory.mktemp("two_class_run") / "run"
    cfg = TrainConfig(task="cls", model="efficientnet_lite0", weights="none", image_size=64, epochs=1, batch_size=8, data=str(manifest), splits=str(splits))
    train(cfg, out, quiet=True)
    return out


def test_fine_tune_three_class_model_on_two_class_data_gets_a_new_head(cls_run, two_class, tmp_path, cli):
    # A release or run folder with normal / benign / malignant, fine-tuned on benign / malignant data:
    # the backbone comes from the folder, the class head starts new (before: a shape mismatch).
    manifest, splits = two_class
    run = tmp_path / "ft"
    code, _, err = cli("train", "cls", "--weights", cls_run, "--data", manifest, "--splits", splits, "--epochs", "1", "--quiet", "--out", run)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model_spec"]["classes"] == ["benign", "malignant"] and config["preprocessing"]["image_size"] == 64
    assert "backbone only; new 2-class head" in config["weight_source"]


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_exported_two_class_model_keeps_its_class_names(cls_two_class_run, synthetic_dir, tmp_path, cli):
    pytest.importorskip("onnxruntime")
    import busai

    path = tmp_path / "cls.onnx"
    code, _, err = cli("export", cls_two_class_run, "--out", path)
    assert code == 0, err
    model = busai.load(path)
    assert model.backend == "onnx" and model.classes == ("benign", "malignant")
    prediction = busai.predict(model, synthetic_dir / "malignant" / "malignant (1).png")
    assert set(prediction.probabilities) == {"benign", "malignant"}


# --------------------------------------------------------------------------- any labels (BI-RADS ...)
_BIRADS = {"benign": ("2", "3"), "malignant": ("4a", "5")}  # phantom class -> the BI-RADS labels it is given, alternately


@pytest.fixture(scope="module")
def birads(tmp_path_factory):
    """A BI-RADS manifest (labels 2, 3, 4a, 5; 9, 9, 6, 6 images) over synthetic lesion phantoms, with their masks."""
    import shutil

    from busai.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("birads")
    phantoms = write_synthetic_dataset(root / "phantoms", n=40, seed=2, size=(64, 80))  # 18 benign, 12 malignant
    out = root / "data"
    rows = ["image,mask,label"]
    for phantom, labels in _BIRADS.items():
        shutil.copytree(phantoms / phantom, out / phantom)
        images = sorted((p for p in (out / phantom).glob("*.png") if "_mask" not in p.name), key=lambda p: int(p.stem.split("(")[1][:-1]))
        for i, image in enumerate(images):
            masks = ";".join(m.relative_to(out).as_posix() for m in sorted(out.joinpath(phantom).glob(f"{image.stem}_mask*.png")))
            label = "4A" if (phantom, i) == ("malignant", 0) else labels[i % 2]  # a table's case does not matter
            rows.append(f"{image.relative_to(out).as_posix()},{masks},{label}")
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    return out / "manifest.csv"


def test_label_order_and_count_names():
    from busai.labels import count_names, ordered

    assert ordered(["5", "10", "4b", None, "2", "malignant", "4a", "normal"]) == ("normal", "malignant", "2", "4a", "4b", "5", "10")
    assert count_names(["benign", "malignant"]) == ("normal", "benign", "malignant")  # standard data: all three, as always
    assert count_names(["4a", "2", "benign"]) == ("benign", "2", "4a")


def test_split_tie_goes_to_the_higher_birads_category():
    from busai.data.splits import unit_label

    assert unit_label(["a", "b"], {"a": "4a", "b": "3"}) == "4a"
    assert unit_label(["a", "b", "c"], {"a": "5", "b": "3", "c": "3"}) == "3"


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_birads_manifest_audits_splits_trains_evaluates_and_predicts(birads, tmp_path, cli):
    # Audit: counts per label present ('4A' reads as 4a).
    code, out, err = cli("data", "audit", birads, "--json")
    assert code == 0, err
    audit = json.loads(out)
    assert audit["counts"] == {"2": 9, "3": 9, "4a": 6, "5": 6} and audit["problem_counts"] == {}

    # Split: stratified on the four labels, each split within one image of its share of every label.
    splits = tmp_path / "splits.json"
    code, out, err = cli("data", "split", birads, "--out", splits, "--val", "0.25", "--test", "0.25")
    assert code == 0, err
    counts = json.loads(splits.read_text())["counts"]
    for name, fraction in (("train", 0.5), ("val", 0.25), ("test", 0.25)):
        assert list(counts[name]) == ["2", "3", "4a", "5"]
        for label, total in audit["counts"].items():
            assert abs(counts[name][label] - fraction * total) <= 1, (name, label, counts)
    assert "4a" in out  # the printed table has a column per label

    # Train: a four-class classifier over the data's labels, in their order.
    run = tmp_path / "run"
    common = ("--data", birads, "--splits", splits, "--weights", "none", "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--quiet")
    code, _, err = cli("train", "cls", "--model", "efficientnet_lite0", "--out", run, *common)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model_spec"]["classes"] == ["2", "3", "4a", "5"] and config["model_spec"]["num_classes"] == 4

    # Evaluate: a row per class, supports as the split file counts them.
    code, out, err = cli("evaluate", run, "--data", birads, "--splits", splits, "--split", "test", "--n-boot", "20", "--no-figures")
    assert code == 0, err
    result = json.loads((run / "metrics.json").read_text())["test"]
    assert result["classes"] == ["2", "3", "4a", "5"] and "note" not in result
    assert {c: result["per_class"][c]["support"] for c in result["classes"]} == counts["test"]

    # Predict: p_2 ... p_5 columns that sum to 1; the label is one of the four.
    import csv

    scans = tmp_path / "scans"
    scans.mkdir()
    for image in sorted(birads.parent.joinpath("malignant").glob("malignant (*).png"))[:2]:
        if "_mask" not in image.name:
            (scans / image.name).write_bytes(image.read_bytes())
    code, _, err = cli("predict", scans, "--out", tmp_path / "preds", "--seg", "none", "--cls", run, "--quiet")
    assert code == 0, err
    with (tmp_path / "preds" / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"p_2", "p_3", "p_4a", "p_5"} <= set(rows[0])
    for row in rows:
        assert row["label"] in ("2", "3", "4a", "5")
        assert sum(float(row[f"p_{c}"]) for c in ("2", "3", "4a", "5")) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_birads_mapped_to_benign_malignant_trains_a_two_class_classifier(birads, tmp_path, cli):
    from busai.data.sources import read_records
    from busai.data.splits import make_splits, write_splits

    splits = tmp_path / "splits.json"
    write_splits(splits, make_splits(read_records(str(birads)), [], val=0.25, test=0.25, seed=0))
    run = tmp_path / "run"
    mapping = "2=benign,3=benign,4a=malignant,5=malignant"
    common = ("--data", birads, "--splits", splits, "--weights", "none", "--image-size", "64", "--epochs", "1", "--batch-size", "4", "--quiet")
    code, _, err = cli("train", "cls", "--model", "efficientnet_lite0", "--classes", mapping, "--out", run, *common)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model_spec"]["classes"] == ["benign", "malignant"]
    # Scored on the BI-RADS labels through the stored mapping: no --classes again.
    code, _, err = cli("evaluate", run, "--data", birads, "--splits", splits, "--split", "test", "--n-boot", "20", "--no-figures")
    assert code == 0, err
    result = json.loads((run / "metrics.json").read_text())["test"]
    test = json.loads(splits.read_text())["counts"]["test"]
    assert result["per_class"]["benign"]["support"] == test["2"] + test["3"]
    assert result["per_class"]["malignant"]["support"] == test["4a"] + test["5"]
    assert {p["data_label"] for p in result["predictions"]} == {"2", "3", "4a", "5"}

    # A subset: the 2 images are left out of training.
    subset = tmp_path / "subset"
    code, _, err = cli("train", "cls", "--model", "efficientnet_lite0", "--classes", "3,4a,5", "--out", subset, *common)
    assert code == 0, err
    config = json.loads((subset / "config.json").read_text())
    train = json.loads(splits.read_text())["counts"]["train"]
    assert config["model_spec"]["classes"] == ["3", "4a", "5"] and config["train_images"] == train["3"] + train["4a"] + train["5"]


@pytest.mark.parametrize("label", ["4 a", "BI-RADS 4", "4/a", "benign?"])
def test_label_that_is_not_a_simple_name_is_refused_naming_file_and_row(tmp_path, cli, label):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    path = tmp_path / "data.csv"
    path.write_text(f"image,label\na.png,2\nb.png,{label}\n")
    rule = "letters, digits, '-', '_' or '.', e.g. 4a or birads-4"
    cli.fails("data", "audit", path, expect=f"data.csv row 3: label '{label}' is not a simple name ({rule}); fix the row")


def test_class_folders_named_by_other_labels(tmp_path, cli):
    from PIL import Image

    for label, n in (("2", 2), ("4A", 3)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    # Detection takes only normal / benign / malignant folders for classes, and says how to read others.
    cli.fails("data", "audit", tmp_path / "data", expect="for folders named by other labels (e.g. BI-RADS 2/ 3/ 4a/) pass --format class-folders")
    code, out, err = cli("data", "audit", tmp_path / "data", "--format", "class-folders", "--json")
    assert code == 0, err
    assert json.loads(out)["counts"] == {"2": 2, "4a": 3}
    (tmp_path / "data" / "BI-RADS 5").mkdir()
    cli.fails("data", "audit", tmp_path / "data", "--format", "class-folders", expect="BI-RADS 5: label 'BI-RADS 5' is not a simple name")


def test_classes_option_refuses_names_that_are_not_simple():
    with pytest.raises(ConfigError, match="'4 a' is not a simple name"):
        parse_classes("2=benign,4 a=malignant")


def test_segmentation_reads_lesion_masks_of_any_label(birads):
    # A segmenter's data may carry BI-RADS labels: its items load (the loss never reads the label),
    # while a class index is refused in one line for a label outside normal / benign / malignant.
    from busai.data.dataset import BusDataset
    from busai.data.sources import read_records
    from busai.errors import DataError

    records = read_records(str(birads))
    item = BusDataset(records[:1], 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))[0]
    assert records[0].label == "2" and item["label"].item() == -1 and item["mask"].sum() > 0
    assert all(r.segmentable for r in records)
    with pytest.raises(DataError, match="label '2' is not one of normal, benign, malignant; train with --classes"):
        _ = records[0].label_index


def test_report_lists_the_audits_and_splits_labels(tmp_path):
    from busai.report_page import audit_section, split_section

    audit = {"root": "birads.csv", "images": 6, "counts": {"2": 2, "3": 1, "4a": 3}, "masks": 6, "duplicate_groups": []}
    table = audit_section(audit)[-1][1]
    assert "| 2 | 2 |" in table and "| 4a | 3 |" in table and "| benign |" not in table
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"command": "busai data split", "duplicates": "group", "counts": {"train": {"2": 1, "4a": 2}, "test": {"2": 1, "4a": 1}}}))
    rows = split_section([splits])[-1][1]
    assert "| 4a | 2 | 1 |" in rows and "| normal |" not in rows
