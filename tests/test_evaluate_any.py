"""Scoring any model on any labelled data, the leak guard, and training on two datasets at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from busai.data.synthetic import write_layout, write_synthetic_dataset


@pytest.fixture(scope="module")
def unseen_uclm(tmp_path_factory) -> Path:
    """A BUS-UCLM-layout dataset of other phantoms (another seed): data the tiny runs never saw."""
    root = tmp_path_factory.mktemp("unseen")
    busi = write_synthetic_dataset(root / "busi", n=12, seed=7, size=(64, 80))
    return write_layout(busi, root / "uclm", "bus-uclm")


def test_run_scored_on_a_dataset_it_never_saw(cli, seg_run, unseen_uclm, tmp_path):
    code, out, err = cli("evaluate", seg_run, "--data", f"uclm={unseen_uclm}", "--all", "--out", tmp_path / "ext", "--n-boot", "20", "--json", "--no-figures")
    assert code == 0, err
    result = json.loads(out)
    assert result["split"] == "all" and result["images"] == 12 and result["datasets"] == ["uclm"]
    assert result["detection"]["lesion_images"] == 9  # 5 benign + 4 malignant of 12 phantoms
    assert result["lesion_dice"]["value"] is not None
    saved = json.loads((tmp_path / "ext" / "segmentation" / "metrics.json").read_text())
    assert saved["uclm/all"]["images"] == 12


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_the_release_scores_both_tasks(cli, unseen_uclm, tmp_path):
    code, out, err = cli("evaluate", "release", "--data", f"uclm={unseen_uclm}", "--all", "--out", tmp_path / "rel", "--n-boot", "20", "--json", "--no-figures")
    assert code == 0, err
    results = json.loads(out)
    assert set(results) == {"segmentation:uclm/all", "classification:uclm/all", "diagnosis:uclm/all"}  # the fused answer predict gives
    cls = results["classification:uclm/all"]
    assert cls["malignant_vs_benign_auc"]["value"] is not None and 0 <= cls["ece"] <= 1
    assert cls["temperature"] > 0


def test_own_training_images_are_refused(cli, seg_run, synthetic_dir, tiny_runs, tmp_path):
    # --all on the dataset the run trained on: its train images would be scored as external data.
    cli.fails(
        "evaluate", seg_run, "--data", synthetic_dir, "--all", "--out", tmp_path / "x", expect="were in this model's training data; scoring them would leak"
    )
    # A split file whose test list is the run's own train images (issue 21, item 1).
    splits = json.loads((tiny_runs / "splits.json").read_text())
    swapped = {**splits, "test": splits["train"], "train": splits["test"]}
    (tmp_path / "swapped.json").write_text(json.dumps(swapped))
    cli.fails("evaluate", seg_run, "--data", synthetic_dir, "--splits", tmp_path / "swapped.json", "--split", "test", expect="test images of")
    # Its own split's test images are fine (scored in a copy: the shared run folder stays as it is).
    import shutil

    run = shutil.copytree(seg_run, tmp_path / "seg")
    code, _, err = cli("evaluate", run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json", "--split", "test", "--n-boot", "10", "--no-figures")
    assert code == 0, err


def test_classification_only_data(cli, cls_run, seg_run, unseen_uclm, tmp_path):
    folders = write_layout(unseen_uclm.parent / "busi", tmp_path / "folders", "class-folders")
    code, out, err = cli("evaluate", cls_run, "--data", folders, "--all", "--out", tmp_path / "c", "--n-boot", "10", "--json", "--no-figures")
    assert code == 0, err
    assert json.loads(out)["n_samples"] == 12
    cli.fails("evaluate", seg_run, "--data", folders, "--all", "--out", tmp_path / "s", expect="segmentation cannot be scored on it")


def test_scores_of_a_release_need_a_place(cli, unseen_uclm):
    cli.fails("evaluate", "release", "--data", unseen_uclm, "--all", expect="is not a run folder, so its scores need a place: pass --out DIR")
    cli.fails("evaluate", "release", "--data", unseen_uclm, expect="say which images to score")


@pytest.mark.slow  # trains or starts processes
def test_training_on_two_datasets(cli, synthetic_dir, unseen_uclm, tmp_path):
    split = tmp_path / "both.json"
    code, _, err = cli("data", "split", "--data", f"a={synthetic_dir}", "--data", f"b={unseen_uclm}", "--out", split, "--val", "0.25", "--test", "0.25")
    assert code == 0, err
    run = tmp_path / "run"
    code, _, err = cli(
        "train",
        "seg",
        "--data",
        f"a={synthetic_dir}",
        "--data",
        f"b={unseen_uclm}",
        "--splits",
        split,
        "--dataset-weight",
        "b=3",
        "--model",
        "unet",
        "--encoder",
        "efficientnet-lite0",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--color",
        "gray",
        "--out",
        run,
        "--quiet",
    )
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    splits = json.loads(split.read_text())
    for name in ("a", "b"):
        assert config["datasets"][name]["train_images"] == sum(k.startswith(f"{name}:") for k in splits["train"])
        assert config["datasets"][name]["fingerprint"] == splits["datasets"][name]["fingerprint"]
    assert config["train"]["dataset_weights"] == {"b": 3.0} and config["preprocessing"]["color"] == "gray"
    # Scored per dataset and pooled.
    code, out, err = cli(
        "evaluate",
        run,
        "--data",
        f"a={synthetic_dir}",
        "--data",
        f"b={unseen_uclm}",
        "--splits",
        split,
        "--split",
        "val",
        "--n-boot",
        "10",
        "--json",
        "--no-figures",
    )
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"a/val", "b/val", "val"}
    assert metrics["val"]["images"] == metrics["a/val"]["images"] + metrics["b/val"]["images"]
    cli.fails(
        "train",
        "seg",
        "--data",
        f"a={synthetic_dir}",
        "--data",
        f"b={unseen_uclm}",
        "--splits",
        split,
        "--dataset-weight",
        "c=1",
        "--weights",
        "none",
        "--out",
        tmp_path / "r2",
        expect="no --data named 'c'",
    )


def test_dataset_weights_set_each_datasets_share():
    import torch

    from busai.data.discover import Record
    from busai.training import _dataset_weighted

    records = [Record(Path("/"), Path(f"/{d}{i}.png"), (), "benign", dataset=d) for d, n in (("a", 3), ("b", 1)) for i in range(n)]
    weights = _dataset_weighted(records, {"b": 2.0}, None)
    assert torch.allclose(weights, torch.tensor([1 / 3, 1 / 3, 1 / 3, 2.0], dtype=torch.double))  # a: 1 in all, b: 2


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_fold_training_and_its_summary(cli, synthetic_dir, tmp_path):
    import csv
    import statistics

    split = tmp_path / "folds.json"
    assert cli("data", "split", synthetic_dir, "--out", split, "--val", "0.2", "--test", "0.2", "--folds", "2")[0] == 0
    args = [
        "train",
        "cls",
        "--model",
        "efficientnet_lite0",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--data",
        synthetic_dir,
        "--splits",
        split,
        "--out",
        tmp_path / "cv",
        "--quiet",
    ]
    cli.fails(*args, "--folds", "3", expect="has 2 folds")
    code, out, err = cli(*args, "--folds", "2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    losses = []
    for i in range(2):
        with open(tmp_path / "cv" / f"fold-{i}" / "history.csv") as handle:
            losses.append(min(float(r["val_loss"]) for r in csv.DictReader(handle)))
        assert json.loads((tmp_path / "cv" / f"fold-{i}" / "config.json").read_text())["train"]["fold"] == i
    assert summary["mean"]["val_loss"] == pytest.approx(statistics.fmean(losses))
    assert summary["sd"]["val_loss"] == pytest.approx(statistics.stdev(losses))
    assert json.loads((tmp_path / "cv" / "folds.json").read_text()) == summary
    code, out, _ = cli(*args, "--folds", "2", "--json")  # finished folds are skipped, the summary is the same
    assert code == 0 and json.loads(out)["folds"] == summary["folds"]


def test_a_saved_onnx_folder_is_scored_like_its_file(cli, seg_onnx, unseen_uclm, tmp_path):
    """A folder holding model.onnx (what Model.save writes for an ONNX model) is a model source for
    evaluate as for busai.load: both resolve through busai.runs.resolve_model."""
    import busai

    pytest.importorskip("onnxruntime")
    exported = seg_onnx[1].path
    saved = busai.load(exported).save(tmp_path / "saved")
    assert (saved / "model.onnx").is_file() and not (saved / "config.json").exists()
    scores = {}
    for name, source in (("file", exported), ("folder", saved)):
        code, out, err = cli("evaluate", source, "--data", f"uclm={unseen_uclm}", "--all", "--out", tmp_path / name, "--n-boot", "20", "--json", "--no-figures")
        assert code == 0, err
        scores[name] = json.loads(out)
    assert scores["folder"]["images"] == 12
    assert scores["folder"]["dice"] == scores["file"]["dice"]
